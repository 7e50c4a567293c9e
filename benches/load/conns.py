#!/usr/bin/env python3
"""Many-connection client for the load benchmark (benches/load/driver.py starts it, pinned to
the load generator's CPU). Two modes, both to 127.0.0.1 only, every wait bounded:

idle   Opens --count keep-alive connections (at most --parallel being opened at once); each
       sends ONE request (a random `x-user-id`), reads the whole response and then stays open,
       sending nothing. Prints one JSON line `{"event": "ready", ...}` once all are open, then
       obeys lines on stdin: `check` prints how many are still open (not closed by the
       target), `close` closes them all, prints `{"event": "closed", ...}` and exits. With no
       command for --hold-timeout seconds it closes everything and exits.

burst  Opens --count connections first, then sends one request on every one of them at the
       same moment (so --count requests are in flight together), waits for every response,
       closes all connections and prints one JSON line with the outcome and timings.

    python3 benches/load/conns.py idle --port 8080 --count 1000
    python3 benches/load/conns.py burst --port 8080 --count 2000
"""

import argparse
import asyncio
import json
import random
import resource
import sys
import time

HOST = "127.0.0.1"


def request_bytes():
    return f"GET / HTTP/1.1\r\nHost: bench\r\nx-user-id: u{random.randint(1, 10**9)}\r\n\r\n".encode()


async def read_response(reader):
    """Reads one HTTP/1.1 response (Content-Length or chunked); returns its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length, chunked = None, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if chunked:
        for _ in range(100000):
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            await reader.readexactly(size + 2)
    elif length:
        await reader.readexactly(length)
    return status


async def open_one(port, send, timeout):
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
    if send:
        writer.write(request_bytes())
        status = await asyncio.wait_for(read_response(reader), timeout)
        return reader, writer, status
    return reader, writer, None


async def open_many(port, count, parallel, send, timeout):
    sem = asyncio.Semaphore(parallel)

    async def guarded():
        async with sem:
            try:
                return await open_one(port, send, timeout)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
                return e

    return await asyncio.gather(*(guarded() for _ in range(count)))


def still_open(conns):
    return sum(1 for r, w in conns if not r.at_eof() and not w.is_closing())


async def close_all(conns):
    for _, w in conns:
        w.close()
    for _, w in conns:
        try:
            await asyncio.wait_for(w.wait_closed(), 5)
        except (OSError, asyncio.TimeoutError):
            pass


def emit(obj):
    print(json.dumps(obj), flush=True)


async def idle(args):
    t0 = time.monotonic()
    results = await open_many(args.port, args.count, args.parallel, True, args.timeout)
    conns = [(r[0], r[1]) for r in results if isinstance(r, tuple)]
    ok = sum(1 for r in results if isinstance(r, tuple) and r[2] == 200)
    errors = [repr(r) for r in results if not isinstance(r, tuple)]
    emit({"event": "ready", "opened": len(conns), "ok": ok, "failed": len(errors),
          "first_error": errors[0] if errors else None, "seconds": round(time.monotonic() - t0, 2)})
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + args.hold_timeout
    for _ in range(10000):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            line = await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), left)
        except asyncio.TimeoutError:
            break
        cmd = line.strip()
        if cmd == "check":
            emit({"event": "check", "open": still_open(conns)})
        elif cmd == "close" or not line:
            break
    open_at_close = still_open(conns)
    await close_all(conns)
    emit({"event": "closed", "open_at_close": open_at_close})


async def burst(args):
    t0 = time.monotonic()
    results = await open_many(args.port, args.count, args.parallel, False, args.timeout)
    conns = [(r[0], r[1]) for r in results if isinstance(r, tuple)]
    connect_errors = len(results) - len(conns)
    t1 = time.monotonic()

    async def one(reader, writer):
        try:
            writer.write(request_bytes())
            return await asyncio.wait_for(read_response(reader), args.timeout)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
            return e

    # Every request is written before any response is awaited: all are in flight together.
    statuses = await asyncio.gather(*(one(r, w) for r, w in conns))
    t2 = time.monotonic()
    await close_all(conns)
    emit({"event": "burst", "connections": len(conns), "connect_errors": connect_errors,
          "ok": sum(1 for s in statuses if s == 200),
          "failed": sum(1 for s in statuses if s != 200),
          "connect_seconds": round(t1 - t0, 2), "request_seconds": round(t2 - t1, 2)})


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["idle", "burst"])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--parallel", type=int, default=200, help="connections being opened at once")
    ap.add_argument("--timeout", type=float, default=30.0, help="per connect / per response, seconds")
    ap.add_argument("--hold-timeout", type=float, default=600.0, help="idle: longest hold without a command")
    args = ap.parse_args()
    if not 1 <= args.count <= 60000 or not 1 <= args.parallel <= 10000:
        ap.error("count 1..60000, parallel 1..10000")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if args.count + 64 > soft:
        ap.error(f"--count {args.count} needs more descriptors than this process may open ({soft})")
    asyncio.run(idle(args) if args.mode == "idle" else burst(args))


if __name__ == "__main__":
    sys.exit(main())

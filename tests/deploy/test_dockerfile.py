"""The Dockerfile, checked without a container engine: parsed by BuildKit's own Dockerfile
parser (the PyPI package `dockerfile` wraps it), its stages and runtime user checked, the
lock file it builds with `--locked` shown to be current, and the binary's shared libraries
shown to be ones the distroless/cc runtime image ships."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import dockerfile
import pytest

from conftest import REPO

# glibc and libgcc: what gcr.io/distroless/cc-debian12 provides beyond the static base.
RUNTIME_LIBS = {"libc.so.6", "libm.so.6", "libgcc_s.so.1", "libpthread.so.0", "libdl.so.2", "librt.so.1", "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1"}


def instructions() -> list[dockerfile.Command]:
    return list(dockerfile.parse_file(str(REPO / "Dockerfile")))


def stages() -> list[list[dockerfile.Command]]:
    out: list[list[dockerfile.Command]] = []
    for c in instructions():
        if c.cmd == "FROM":
            out.append([])
        if out:
            out[-1].append(c)
    return out


def test_dockerfile_is_multi_stage_rust_builder_to_small_runtime() -> None:
    builder, runtime = stages()
    assert builder[0].value[0].startswith("rust:") and builder[0].value[-1] == "builder"
    runs = " ".join(" ".join(c.value) for c in builder if c.cmd == "RUN")
    assert "cargo build --release" in runs and "--bin rampart" in runs
    assert re.match(r"(gcr\.io/distroless/cc|debian:[a-z]+-slim)", runtime[0].value[0]), runtime[0].value
    copies = [c for c in runtime if c.cmd == "COPY"]
    assert copies and all("--from=builder" in c.flags for c in copies), "the runtime stage copies only build output"
    assert not [c for c in runtime if c.cmd == "RUN"], "nothing runs in the runtime stage"


def test_the_image_ships_the_profile_guided_build_by_default() -> None:
    builder = stages()[0]
    args = [c.value[0] for c in builder if c.cmd == "ARG"]
    assert "PGO=1" in args, "the profile-guided build is the default"
    runs = " ".join(" ".join(c.value) for c in builder if c.cmd == "RUN")
    assert "rustup component add llvm-tools" in runs, "llvm-profdata of rustc's own LLVM"
    assert "bash benches/pgo/build.sh --locked" in runs and "target/pgo/use/release/rampart" in runs
    assert (REPO / "benches" / "pgo" / "build.sh").is_file() and (REPO / "benches" / "pgo" / "train.py").is_file()


def test_runtime_runs_rampart_as_non_root() -> None:
    runtime = stages()[-1]
    users = [c.value[0] for c in runtime if c.cmd == "USER"]
    assert users, "no USER in the runtime stage"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root uid, so runAsNonRoot can check it"
    entrypoint = [c for c in runtime if c.cmd == "ENTRYPOINT"][-1]
    assert entrypoint.value[0].endswith("/rampart")
    assert [c for c in runtime if c.cmd == "CMD"][-1].value[0] == "run"
    state = [c for c in runtime if c.cmd == "COPY" and c.value[-1] == "/var/lib/rampart"]
    assert state and f"--chown={uid}:{uid}" in state[0].flags, "state_dir belongs to the runtime user"


def test_build_context_leaves_out_the_target_dir() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    assert "target/" in ignored or "target" in ignored
    assert ".git/" in ignored or ".git" in ignored


def test_lock_file_is_current_for_the_locked_build() -> None:
    cargo = shutil.which("cargo")
    if cargo is None:
        pytest.skip("no cargo on PATH")
    host = re.search(r"^host: (\S+)", subprocess.run(["rustc", "-vV"], capture_output=True, text=True, timeout=60).stdout, re.M)
    assert host is not None
    # --filter-platform: only what a build for this platform resolves. Offline first (the
    # build that made the binary downloaded it); online if something is missing.
    argv = [cargo, "metadata", "--locked", "--format-version", "1", "--filter-platform", host.group(1)]
    result = subprocess.run([*argv, "--offline"], cwd=REPO, capture_output=True, text=True, timeout=300)
    if result.returncode != 0 and "--offline was specified" in result.stderr:
        result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, "`cargo build --locked` in the Dockerfile would fail:\n" + result.stderr[-2000:]


def test_binary_needs_only_libraries_the_runtime_image_ships(rampart_bin: Path) -> None:
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("no readelf (binutils)")
    dynamic = subprocess.run([readelf, "-d", str(rampart_bin)], capture_output=True, text=True, timeout=60).stdout
    needed = set(re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic))
    assert needed, "no NEEDED entries: not a dynamic ELF binary?"
    assert needed <= RUNTIME_LIBS, f"needs libraries distroless/cc lacks: {needed - RUNTIME_LIBS}"

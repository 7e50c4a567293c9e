#!/usr/bin/env bash
# Rampart's load benchmark in one command (see benches/README.md).
#
# Checks for its tools (installs nothing), builds release binaries of Rampart and of the two
# bench-only peers (bare hyper, bare pingora: their own workspace, their own target dir
# target/peers), then runs benches/load/driver.py, which measures everything in one
# interleaved run (64 connections and 1 connection per target, an upstream-connections burst,
# idle keep-alive connections through benches/load/conns.py) and writes the tables to
# docs/PERFORMANCE.md. Arguments go to the driver
# (`benches/load/run.sh --help`); `--skip E` leaves pingora out (and so needs no cmake).
# Rampart is measured as its profile-guided build (benches/pgo/build.sh, which needs an
# llvm-profdata of rustc's LLVM version) with the plain release build beside it;
# RAMPART_BENCH_PGO=0 measures the plain build alone.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"

missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$1 ($2)"); }
need nginx   "apt-get install nginx-light"
need haproxy "apt-get install haproxy"
need wrk     "apt-get install wrk"
need taskset "apt-get install util-linux"
need ss      "apt-get install iproute2"
need python3 "apt-get install python3"
need cargo   "https://rustup.rs"
skip_pingora=0
prev=""
for arg in "$@"; do
  if [[ "$prev" == "--skip" && "$arg" == *[Ee]* ]] || [[ "$arg" == --skip=*[Ee]* ]]; then
    skip_pingora=1
  fi
  prev="$arg"
done
if [[ $skip_pingora -eq 0 ]]; then
  need cmake "apt-get install cmake   (pingora builds libz-ng through it; or pass --skip E)"
fi
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "load bench: missing tools; nothing was installed:" >&2
  for m in "${missing[@]}"; do echo "  - $m" >&2; done
  echo "On Debian: apt-get install nginx-light haproxy wrk cmake" >&2
  exit 2
fi
if [[ "$(nproc)" -lt 2 ]]; then
  echo "load bench: needs 2 CPUs (the target on CPU 0, wrk and the upstream on CPU 1)" >&2
  exit 2
fi

echo "building rampart (release)"
cargo build --release --bin rampart
target_dir="${CARGO_TARGET_DIR:-$root/target}"
plain="$target_dir/release/rampart"
# What the image ships is the profile-guided build (benches/pgo/build.sh): it is measured as
# Rampart, and the plain release build beside it. Without an llvm-profdata for rustc's LLVM
# only the plain build is measured.
pgo_args=(--rampart "$plain")
if [[ "${RAMPART_BENCH_PGO:-1}" != "0" ]]; then
  if bash benches/pgo/build.sh; then
    pgo_args=(--rampart "$root/target/pgo/use/release/rampart"
              --rampart-label "Rampart (profile-guided build; threads: 1, breaker, metrics)"
              --also-rampart "plain release build=$plain")
  else
    echo "load bench: no profile-guided build (see above); measuring the plain release build" >&2
  fi
fi
echo "building the bench peers (release, target/peers)"
peers=(-p bare-hyper)
[[ $skip_pingora -eq 0 ]] && peers+=(-p bare-pingora)
CARGO_TARGET_DIR="$root/target/peers" cargo build --release \
  --manifest-path benches/peers/Cargo.toml "${peers[@]}"

# The binaries just built (CARGO_TARGET_DIR honoured); a --rampart given here wins.
exec python3 benches/load/driver.py "${pgo_args[@]}" "$@"

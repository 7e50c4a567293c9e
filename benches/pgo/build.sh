#!/usr/bin/env bash
# Rampart's profile-guided release build (docs/PERFORMANCE.md#profile-guided-build).
#
#   bash benches/pgo/build.sh            # -> target/pgo/use/release/rampart
#
# 1. builds `rampart` instrumented (-Cprofile-generate) in target/pgo/gen;
# 2. runs the training load, benches/pgo/train.py, against it (about 25 s);
# 3. merges the profiles with the llvm-profdata of rustc's own LLVM;
# 4. builds `rampart` again with them (-Cprofile-use) in target/pgo/use.
#
# The Dockerfile builds the image this way. It needs Python 3 and an llvm-profdata of the
# LLVM major version rustc was built with: `rustup component add llvm-tools`, or Debian's
# llvm-N package (N from `rustc -vV`). curl and openssl, when present, add HTTP/2 and TLS to
# the training. Extra cargo arguments (e.g. --locked) are passed to both builds.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"

llvm_major="$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')"
host="$(rustc -vV | sed -n 's/^host: //p')"
profdata=""
for candidate in \
  "$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata" \
  "$(command -v "llvm-profdata-$llvm_major" || true)" \
  "/usr/lib/llvm-$llvm_major/bin/llvm-profdata" \
  "$(command -v llvm-profdata || true)"; do
  [[ -n "$candidate" && -x "$candidate" ]] || continue
  # A profile written by one LLVM major version is not read by another.
  if "$candidate" --version 2>/dev/null | grep -q "LLVM version $llvm_major\."; then
    profdata="$candidate"
    break
  fi
done
if [[ -z "$profdata" ]]; then
  echo "pgo build: no llvm-profdata for LLVM $llvm_major (rustc's); install one of:" >&2
  echo "  rustup component add llvm-tools" >&2
  echo "  apt-get install llvm-$llvm_major" >&2
  exit 2
fi
command -v python3 >/dev/null || { echo "pgo build: python3 is needed for the training load" >&2; exit 2; }

profiles="$root/target/pgo/profiles"
rm -rf "$profiles"
mkdir -p "$profiles"

echo "pgo build: 1/4 instrumented build (target/pgo/gen)"
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$profiles/raw" \
  cargo build --release --bin rampart --target-dir target/pgo/gen "$@"
# Build scripts ran instrumented too: only the training's profiles are kept.
rm -rf "$profiles/raw"

echo "pgo build: 2/4 training load"
python3 benches/pgo/train.py --rampart target/pgo/gen/release/rampart

echo "pgo build: 3/4 merging profiles with $profdata"
"$profdata" merge -o "$profiles/rampart.profdata" "$profiles/raw"

echo "pgo build: 4/4 optimized build (target/pgo/use)"
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$profiles/rampart.profdata" \
  cargo build --release --bin rampart --target-dir target/pgo/use "$@"
echo "pgo build: target/pgo/use/release/rampart"

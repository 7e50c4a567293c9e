#!/usr/bin/env bash
# CI: the profile-guided release build the image ships (benches/pgo/build.sh), end to end:
# instrumented build, the training load (which fails when Rampart answers no request),
# merged profiles, optimized build; then the optimized binary checks the shipped config.
#
# Needs an llvm-profdata of rustc's LLVM major version: installs Debian's llvm-N with apt-get
# when neither rustup's llvm-tools nor llvm-N is there.
set -euo pipefail
cd "$(dirname "$0")/.."

major="$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')"
host="$(rustc -vV | sed -n 's/^host: //p')"
if [ ! -x "$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata" ] \
   && ! command -v "llvm-profdata-$major" >/dev/null 2>&1 \
   && [ ! -x "/usr/lib/llvm-$major/bin/llvm-profdata" ]; then
    echo "== installing llvm-$major (llvm-profdata for rustc's LLVM)"
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    $SUDO DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "llvm-$major" >/dev/null
fi
bash benches/pgo/build.sh --locked
target/pgo/use/release/rampart check -c config/rampart.yaml

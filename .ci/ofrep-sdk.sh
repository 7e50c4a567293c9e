#!/usr/bin/env bash
# OpenFeature SDK check (issue 17): the official Python SDK (openfeature-sdk) with its OFREP
# provider (openfeature-provider-ofrep), from PyPI, against the debug binary's ofrep_listen.
# The SDK's answers must equal where the proxy routes the same users (tests/ofrep_sdk).
#
# Makes a venv with tests/ofrep_sdk/requirements.txt, builds the debug binary, runs pytest.
# Idempotent: a second run installs nothing and rebuilds nothing that is up to date.
#
#   .ci/ofrep-sdk.sh            # everything
#   .ci/ofrep-sdk.sh -k toggle  # extra arguments go to pytest
#
# Environment: RAMPART_OFREP_VENV (default ~/.cache/rampart/ofrep-sdk-venv), RAMPART_BIN (use
# this binary instead of building one).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

echo "== ofrep-sdk: Python venv"
venv=${RAMPART_OFREP_VENV:-${HOME:-/root}/.cache/rampart/ofrep-sdk-venv}
requirements=tests/ofrep_sdk/requirements.txt
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$requirements" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$requirements"
    echo "$want" > "$stamp"
fi
"$venv/bin/python" -m pip list --disable-pip-version-check 2>/dev/null | grep -i openfeature

echo "== ofrep-sdk: the rampart binary"
if [ -z "${RAMPART_BIN:-}" ]; then
    cargo build --quiet --bin rampart
    target_dir=$(cargo metadata --no-deps --format-version 1 | "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
    export RAMPART_BIN="$target_dir/debug/rampart"
fi
echo "$RAMPART_BIN"

echo "== ofrep-sdk: pytest tests/ofrep_sdk"
cd "$root/tests/ofrep_sdk"
export PYTHONDONTWRITEBYTECODE=1
exec "$venv/bin/python" -m pytest -p no:cacheprovider "$@"

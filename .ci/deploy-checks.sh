#!/usr/bin/env bash
# Deploy checks (issue 6): the Helm chart rendered by the Helm SDK and validated against the
# Kubernetes schemas, the alert rules under promtool, docker-compose.yml under Docker Compose's
# own loader, and an end-to-end run of rampart + Prometheus on loopback.
#
# Installs what it needs (Debian's prometheus package for prometheus and promtool; a Python
# venv with tests/deploy/requirements.txt), builds the debug binary, runs tests/deploy with
# pytest. Idempotent: a second run installs nothing and rebuilds nothing that is up to date.
#
#   .ci/deploy-checks.sh            # everything
#   .ci/deploy-checks.sh -k helm    # extra arguments go to pytest
#
# Environment: RAMPART_DEPLOY_VENV (default ~/.cache/rampart/deploy-venv), RAMPART_BIN (use
# this binary instead of building one).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

echo "== deploy-checks: tools"
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq
    as_root apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
promtool --version 2>&1 | head -n 1

venv=${RAMPART_DEPLOY_VENV:-${HOME:-/root}/.cache/rampart/deploy-venv}
requirements=tests/deploy/requirements.txt
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$requirements" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$requirements"
    echo "$want" > "$stamp"
fi
"$venv/bin/python" -c 'import helm_python, kubernetes_validate; print("helm SDK", helm_python.helm_sdk_version(), "| kubernetes-validate", kubernetes_validate.__version__, "(schemas up to", kubernetes_validate.latest_version() + ")")'

echo "== deploy-checks: the rampart binary"
if [ -z "${RAMPART_BIN:-}" ]; then
    cargo build --quiet --bin rampart
    target_dir=$(cargo metadata --no-deps --format-version 1 | "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
    export RAMPART_BIN="$target_dir/debug/rampart"
fi
echo "$RAMPART_BIN"

echo "== deploy-checks: pytest tests/deploy"
cd "$root/tests/deploy"
# Nothing here may be cached from a previous run on another checkout.
export PYTHONDONTWRITEBYTECODE=1
exec "$venv/bin/python" -m pytest -p no:cacheprovider "$@"

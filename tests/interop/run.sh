#!/usr/bin/env bash
# Runs the Python interop suite against the real roostd binary.
#
#   tests/interop/run.sh [pytest args...]
#
# ROOSTD_BIN picks the binary (default: target/debug/roostd, built here when
# ROOSTD_BIN is unset). Python packages go into a venv in target/interop-venv,
# or, where venv is unavailable, into the user site with the system pip.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
here="tests/interop"

if [[ -z "${ROOSTD_BIN:-}" ]]; then
    cargo build --quiet --bin roostd
    export ROOSTD_BIN="$root/target/debug/roostd"
fi

venv="$root/target/interop-venv"
python="${PYTHON:-python3}"
if [[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv" >/dev/null 2>&1; then
    py="$venv/bin/python"
    # Reinstall only when the requirements changed.
    stamp="$venv/.requirements"
    if ! cmp -s "$here/requirements.txt" "$stamp"; then
        log="$venv/pip.log"
        if ! "$py" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt" 2>"$log"; then
            cat "$log" >&2
            # An unreachable PyPI is a skip (exit 78), anything else fails.
            SKIP_NAME=interop
            . .ci/lib.sh
            registry_unreachable "$log" && skip_registry "pip could not reach PyPI for tests/interop/requirements.txt"
            exit 1
        fi
        cp "$here/requirements.txt" "$stamp"
    fi
else
    echo "run.sh: no venv available; installing with the system pip (--user)" >&2
    rm -rf "$venv"
    py="$python"
    "$py" -m pip install --quiet --disable-pip-version-check --user -r "$here/requirements.txt" \
        || "$py" -m pip install --quiet --disable-pip-version-check --user --break-system-packages -r "$here/requirements.txt"
fi

export PYTHONDONTWRITEBYTECODE=1  # leave no __pycache__ in the source tree
exec "$py" -m pytest -q -p no:cacheprovider "$here" "$@"

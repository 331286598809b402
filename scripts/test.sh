#!/usr/bin/env bash
# Run the test suite on a fresh machine: provision PostgreSQL + PostGIS (the real STAC API the
# tests start needs them) and Chromium (the report test opens its page), install the project with
# its test extras, lint, type-check, test.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/provision.sh
# The report test opens the page in a real headless Chromium: Debian's package (and a font for its text).
if ! command -v chromium >/dev/null; then
    if [[ "$(id -u)" -ne 0 ]]; then
        echo "test: chromium is missing; run as root, or install it: sudo apt-get install -y chromium" >&2
        exit 1
    fi
    log=/tmp/provision-chromium.log
    echo "test: apt-get install chromium (log: $log)"
    if ! { DEBIAN_FRONTEND=noninteractive apt-get update &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium fonts-dejavu-core; } >"$log" 2>&1; then
        echo "test: installing chromium failed; last lines of $log:" >&2
        tail -n 20 "$log" >&2
        exit 1
    fi
fi
python -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -e ".[test]"
ruff check .
mypy -p spectral_corpus
python -m pytest "$@"

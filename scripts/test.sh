#!/usr/bin/env bash
# Run the test suite on a fresh machine: provision PostgreSQL + PostGIS (the real STAC API the
# tests start needs them), install the project with its test extras, lint, type-check, test.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/provision.sh
python -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -e ".[test]"
ruff check .
mypy -p spectral_corpus
python -m pytest "$@"

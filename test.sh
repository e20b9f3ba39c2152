#!/usr/bin/env bash
# Set up .venv with the test dependencies if needed, then lint and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh requirements-dev.txt
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q "$@"

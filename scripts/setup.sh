#!/usr/bin/env bash
# Create (or update) the project's virtualenv in .venv from a requirements file.
# Usage: scripts/setup.sh [requirements.txt | requirements-dev.txt]
set -euo pipefail
cd "$(dirname "$0")/.."
req="${1:-requirements.txt}"
py="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
stamp=".venv/.installed-$(basename "$req")"
hash=$(cat requirements*.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$hash" ]; then
  echo "installing $req into .venv (first run downloads PyTorch, a few GB)..." >&2
  .venv/bin/python -m pip install --quiet -r "$req"
  echo "$hash" > "$stamp"
fi

#!/usr/bin/env bash
# Set up .venv if needed, then start the web app: ./app.sh [--share] [--server-name 0.0.0.0] [--port 7860]
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh requirements.txt
exec .venv/bin/python app.py "$@"

#!/usr/bin/env bash
# Set up .venv if needed, then generate music: ./run.sh "lofi hip hop beat" --duration 8 -o out.wav
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh requirements.txt
exec .venv/bin/python -m musicgen "$@"

#!/usr/bin/env bash
# Create (or update) the project's virtualenv in .venv from a requirements file, with every package
# (direct and transitive) held to the exact version in requirements.lock: what CI tested is what you get.
# Usage: scripts/setup.sh [requirements.txt | requirements-dev.txt]
# requirements-dev.txt also fetches the test oracles (tests/oracles.txt) into .venv/oracles.
set -euo pipefail
cd "$(dirname "$0")/.."
req="${1:-requirements.txt}"
py="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
stamp=".venv/.installed-$(basename "$req")"
hash=$(cat requirements*.txt requirements.lock tests/oracles.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$hash" ]; then
  echo "installing $req into .venv (first run downloads PyTorch, a few GB)..." >&2
  .venv/bin/python -m pip install --quiet -r "$req" -c requirements.lock
  if [ "$req" = "requirements-dev.txt" ]; then
    # Test-only: audiocraft's own source, the oracle the MBD tests compare against. Downloaded (hash-checked)
    # and unpacked, never installed: tests import the few modules they need with its heavy imports stubbed.
    rm -rf .venv/oracles && mkdir -p .venv/oracles/dl
    .venv/bin/python -m pip download --quiet --no-deps --no-binary :all: --require-hashes -r tests/oracles.txt \
      -d .venv/oracles/dl
    for f in .venv/oracles/dl/*.tar.gz; do tar -xzf "$f" -C .venv/oracles; done
    rm -rf .venv/oracles/dl
  fi
  echo "$hash" > "$stamp"
fi

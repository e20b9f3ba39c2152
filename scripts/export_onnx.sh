#!/usr/bin/env bash
# Export a MusicGen checkpoint (transformers layout) to ONNX with optimum, as Xenova/musicgen-small and
# transformers.js do, plus its int8 variant (onnxruntime quantize_dynamic, QInt8 per-tensor: transformers.js "q8").
# Usage: scripts/export_onnx.sh MODEL_FOLDER OUT_FOLDER     (then bench/bench_generate.py --ort OUT_FOLDER)
# optimum's exporter needs transformers < 4.58: it gets a virtualenv of its own, .venv-onnx (not the project's).
set -euo pipefail
cd "$(dirname "$0")/.."
model="$1"; out="$2"
if [ ! -x .venv-onnx/bin/python ]; then
  python3 -m venv .venv-onnx
  .venv-onnx/bin/python -m pip install --quiet --upgrade pip
fi
.venv-onnx/bin/python -m pip install --quiet -r bench/requirements-onnx.txt
.venv-onnx/bin/optimum-cli export onnx -m "$model" --task text-to-audio "$out"
.venv-onnx/bin/python bench/ort_engine.py quantize "$out"

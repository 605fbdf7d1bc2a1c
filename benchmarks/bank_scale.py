"""Per-process memory of CLIP-PING steps that read memory-mapped banks of N rows.

    .venv/bin/python benchmarks/bank_scale.py --rows 300000 3000000 --work /tmp/bank_scale

For each N the script writes (once; reused on later runs) synthetic image and text banks:
``(N, 384)`` float16 unit rows, written chunk by chunk through ``np.lib.format.open_memmap``
so the writer never holds a bank, with ``meta.json`` as ``clip-ping bank build`` writes it,
and random ``(N, K)`` int32 neighbour tables (self excluded) with ``neighbors.json``. The
neighbours are random on purpose: the point is the reading path, and uniform neighbours touch
the most pages. Then, in a **fresh process per (N, madvise) pair**, it runs ``--steps``
CLIP-PING training steps of ``cpu-micro-32`` on random pixels and token ids with anchors
drawn uniformly from ``[0, N)`` (a shuffled epoch), the neighbour draw and the ``bank``
targets coming from those files through :class:`clip_ping.guidance.NeighborGuidance`, as in
``clip-ping train``: draw, read 2 table rows and 4 bank rows per anchor, forward, NN/XNN/CLIP
losses, backward, AdamW.

After every step it reads ``/proc/self/status``:

- ``RssAnon``: private anonymous memory (torch, the model, activations, optimizer state,
  the rows copied out of the banks). This is the memory that is the rank's own and that
  must not grow with N; the bound is stated on it.
- ``RssFile``: file pages mapped into the process: shared libraries and the bank/table pages
  touched so far. They are page cache: clean, shared by every rank on the node, dropped by
  the kernel under pressure. They grow with the number of distinct pages touched (at most
  the files' size), not with a per-rank copy.
- ``VmHWM``: the peak of their sum.

``--madvise random`` (what :class:`NeighborGuidance` sets; ``normal`` for comparison) tells
the kernel the bank pages are read at random, so a 768-byte row does not pull a 128 KiB
readahead window in from disk. ``--cold`` first drops the banks' and tables' pages from the
page cache (``posix_fadvise(DONTNEED)`` on those files only), so the steps read from disk;
the rows then also report the bytes read from disk and the major page faults.

Prints a markdown table; ``--out FILE.json`` keeps the rows.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DIM, K, CHUNK_ROWS = 384, 10, 1 << 17
STATUS_FIELDS = ("VmHWM", "VmRSS", "RssAnon", "RssFile")


def status_mib() -> dict[str, float]:
    """Memory fields of ``/proc/self/status`` in MiB."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in STATUS_FIELDS:
            values[name] = int(rest.split()[0]) / 1024  # kB
    return values


def write_bank(folder: Path, modality: str, rows: int, seed: int) -> None:
    """A finished synthetic bank with a top-``K`` table, written in chunks."""
    from clip_ping.bank import (
        BANK_FORMAT,
        FEATURES,
        META,
        NEIGHBORS,
        NEIGHBORS_META,
        SIMILARITIES,
        has_neighbor_table,
    )
    from clip_ping.io import atomic_write_text

    if has_neighbor_table(folder):
        return
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    features = np.lib.format.open_memmap(folder / FEATURES, "w+", np.float16, (rows, DIM))
    neighbors = np.lib.format.open_memmap(folder / NEIGHBORS, "w+", np.int32, (rows, K))
    similarities = np.lib.format.open_memmap(folder / SIMILARITIES, "w+", np.float16, (rows, K))
    for start in range(0, rows, CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, rows)
        block = rng.standard_normal((stop - start, DIM), dtype=np.float32)
        features[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
        # i + 1 + [0, N - 1) mod N: any row but i itself.
        offsets = rng.integers(1, rows, size=(stop - start, K))
        neighbors[start:stop] = (np.arange(start, stop)[:, None] + offsets) % rows
        similarities[start:stop] = np.linspace(0.9, 0.5, K, dtype=np.float16)
    for array in (features, neighbors, similarities):
        array.flush()
    del features, neighbors, similarities
    meta = {
        "format": BANK_FORMAT, "teacher": "synthetic", "modality": modality, "dim": DIM,
        "num_rows": rows, "fingerprint": f"synthetic-{rows}", "dtype": "float16",
    }  # fmt: skip
    atomic_write_text(folder / META, json.dumps(meta, indent=1) + "\n")
    info = {"k": K, "backend": "synthetic-random", "bank": meta["fingerprint"]}
    atomic_write_text(folder / NEIGHBORS_META, json.dumps(info, indent=1) + "\n")


def drop_from_page_cache(root: Path) -> None:
    """Evict the bank and table files' clean pages (no effect on other files)."""
    for path in root.glob("*/*.npy"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def disk_read_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    return 0


def measure(root: Path, steps: int, batch_size: int, advice: str, cold: bool = False) -> dict:
    """Run ``steps`` CLIP-PING steps over the banks in ``root``; memory and time."""
    import torch

    from clip_ping.bank import FEATURES, NEIGHBORS, Bank
    from clip_ping.guidance import NeighborGuidance
    from clip_ping.losses import TOTAL_TERMS, ClipLoss, NeighborLoss
    from clip_ping.models import create_model
    from clip_ping.task import ContrastiveStep

    before_import = status_mib()
    torch.manual_seed(0)
    model, tokenizer = create_model("cpu-micro-32", seed=0)
    image_bank, text_bank = Bank(root / "image"), Bank(root / "text")
    guidance = NeighborGuidance(image_bank, text_bank, k=K, target="bank", seed=0)
    if advice == "normal":  # undo what NeighborGuidance advised, for the comparison
        for array in (guidance.image_features, guidance.text_features):
            array.base.madvise(mmap.MADV_NORMAL)  # mapped by clip_ping.bank.open_array
        for array in (guidance.image_neighbors, guidance.text_neighbors):
            array.base.madvise(mmap.MADV_NORMAL)
    loss = NeighborLoss(model.embed_dim, image_bank_dim=DIM, text_bank_dim=DIM, target="bank")
    step_module = ContrastiveStep(model, ClipLoss(), loss)
    optimizer = torch.optim.AdamW(step_module.parameters(), lr=1e-4)
    num_rows = len(image_bank)
    rng = torch.Generator().manual_seed(0)
    if cold:
        drop_from_page_cache(root)
    read_before, faults_before = disk_read_bytes(), resource.getrusage(resource.RUSAGE_SELF)
    started = status_mib()
    peaks = dict(started)
    after_warmup: dict[str, float] = {}
    step_seconds, read_seconds = [], []
    for step in range(steps):
        indices = torch.randint(0, num_rows, (batch_size,), generator=rng)
        images = torch.randn(batch_size, 3, model.image_size, model.image_size, generator=rng)
        texts = torch.randint(0, tokenizer.vocab_size, (batch_size, 16), generator=rng)
        t0 = time.perf_counter()
        targets = guidance.targets(indices, step, torch.device("cpu"))
        t1 = time.perf_counter()
        terms, _ = step_module(images, texts, targets)
        sum(v for k, v in terms.items() if k in TOTAL_TERMS).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_seconds.append(time.perf_counter() - t0)
        read_seconds.append(t1 - t0)
        now = status_mib()
        peaks = {k: max(peaks[k], now[k]) for k in peaks}
        if step == 9:
            after_warmup = now
    end = status_mib()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_majflt - faults_before.ru_majflt
    read_mib = (disk_read_bytes() - read_before) / 2**20
    bank_bytes = sum(
        (root / m / f).stat().st_size for m in ("image", "text") for f in (FEATURES, NEIGHBORS)
    )
    return {
        "rows": num_rows, "steps": steps, "batch_size": batch_size, "madvise": advice,
        "cold": cold, "disk_read_mib": read_mib, "major_faults": faults,
        "bank_and_table_mib": bank_bytes / 2**20,
        "rss_anon_before_import_mib": before_import["RssAnon"],
        "rss_anon_start_mib": started["RssAnon"],
        "rss_anon_after_10_steps_mib": after_warmup.get("RssAnon", float("nan")),
        "rss_anon_end_mib": end["RssAnon"], "rss_anon_peak_mib": peaks["RssAnon"],
        "rss_file_start_mib": started["RssFile"], "rss_file_peak_mib": peaks["RssFile"],
        "vm_hwm_mib": end["VmHWM"],
        "ms_per_step": 1e3 * statistics.median(step_seconds),
        "ms_bank_read_per_step": 1e3 * statistics.median(read_seconds),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[300_000, 3_000_000])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--madvise", nargs="+", default=["random", "normal"])
    parser.add_argument("--cold", action="store_true", help="start with the banks uncached")
    parser.add_argument("--work", default="/tmp/clip_ping_bank_scale")
    parser.add_argument("--out", default=None, help="JSON file for the rows")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    if args.measure:
        result = measure(
            Path(args.measure), args.steps, args.batch_size, args.madvise[0], args.cold
        )
        print(json.dumps(result))
        return

    results = []
    for rows in args.rows:
        root = Path(args.work) / f"n{rows}"
        started = time.perf_counter()
        for seed, modality in enumerate(("image", "text")):
            write_bank(root / modality, modality, rows, seed)
        print(f"{rows:,} rows: banks ready in {time.perf_counter() - started:.0f} s", flush=True)
        for advice in args.madvise:
            child = subprocess.run(
                [sys.executable, __file__, "--measure", str(root), "--steps", str(args.steps),
                 "--batch-size", str(args.batch_size), "--madvise", advice]
                + (["--cold"] if args.cold else []),
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            results.append(json.loads(child.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), flush=True)
    print(
        "\n| rows | banks + tables on disk (MiB) | madvise | cache | RssAnon at start "
        "| after 10 steps | peak | RssFile at start | peak | VmHWM | read from disk (MiB) "
        "| major faults | ms/step | of which bank reads |"
    )
    print("|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['rows']:,} | {r['bank_and_table_mib']:,.0f} | {r['madvise']} "
            f"| {'cold' if r['cold'] else 'warm'} "
            f"| {r['rss_anon_start_mib']:.0f} | {r['rss_anon_after_10_steps_mib']:.0f} "
            f"| {r['rss_anon_peak_mib']:.0f} | {r['rss_file_start_mib']:.0f} "
            f"| {r['rss_file_peak_mib']:.0f} | {r['vm_hwm_mib']:.0f} "
            f"| {r['disk_read_mib']:,.0f} | {r['major_faults']:,} | {r['ms_per_step']:.0f} "
            f"| {r['ms_bank_read_per_step']:.1f} |"
        )
    if args.out:
        from clip_ping.io import atomic_write_text

        atomic_write_text(args.out, json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()

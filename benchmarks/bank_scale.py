"""Per-process memory and loop time of CLIP-PING steps that read memory-mapped banks of N rows.

    .venv/bin/python benchmarks/bank_scale.py --rows 300000 3000000 --work /tmp/bank_scale
    .venv/bin/python benchmarks/bank_scale.py --rows 3000000 --madvise random \
        --paths loop workers --cache warm cold --steps 200 --work /tmp/bank_scale

For each N the script writes (once; reused on later runs) synthetic image and text banks:
``(N, 384)`` float16 unit rows, written chunk by chunk through ``np.lib.format.open_memmap``
so the writer never holds a bank, with ``meta.json`` as ``clip-ping bank build`` writes it,
and random ``(N, K)`` int32 neighbour tables (self excluded) with ``neighbors.json``. The
neighbours are random on purpose: the point is the reading path, and uniform neighbours touch
the most pages. Then, in a **fresh process per (N, cache, madvise, path)**, it runs ``--steps``
CLIP-PING training steps of ``cpu-micro-32`` on random pixels and token ids with anchors
drawn uniformly from ``[0, N)`` (a shuffled epoch), the neighbour draw and the ``bank``
targets coming from those files through :class:`clip_ping.guidance.NeighborGuidance`: draw,
read 2 table rows and 4 bank rows per anchor, forward, NN/XNN/CLIP losses, backward, AdamW.

The anchors come from a DataLoader with ``--workers`` worker processes, as a training
batch does. ``--paths`` says where the draw and the row reads run:

- ``loop``: in the training loop, between steps, on the indices the loader delivers
  (``clip-ping train`` before they moved to the loader's workers; still the path of the
  ``active`` source);
- ``workers``: in the loader's workers, on each collated batch, through
  :class:`clip_ping.guidance.NeighborTransform` (what ``clip-ping train`` does); the loop
  then only assembles what the batch brings.

Each row reports the loop's host time per step spent on neighbours (``ms_neighbors_in_loop``:
median and mean), the time it waited for the next batch (where the ``workers`` path pays for
the transfer of the neighbours' ids and rows from the worker, and for any stall), the whole
step, and (``workers``) the workers' own time per batch on the draw and reads.

After every step it reads ``/proc/self/status`` (of the training process; on the ``workers``
path the rows' pages are mapped by the workers, each a process of its own):

- ``RssAnon``: private anonymous memory (torch, the model, activations, optimizer state,
  the rows copied out of the banks). This is the memory that is the rank's own and that
  must not grow with N; the bound is stated on it.
- ``RssFile``: file pages mapped into the process: shared libraries and the bank/table pages
  touched so far. They are page cache: clean, shared by every rank on the node, dropped by
  the kernel under pressure. They grow with the number of distinct pages touched (at most
  the files' size), not with a per-rank copy.
- ``VmHWM``: the peak of their sum.

``--madvise random`` (what :class:`NeighborGuidance` sets; ``normal`` for comparison, loop
path only) tells the kernel the bank pages are read at random, so a 768-byte row does not
pull a 128 KiB readahead window in from disk. ``--cache cold`` (or ``--cold``) first drops
the banks' and tables' pages from the page cache (``posix_fadvise(DONTNEED)`` on those files
only), so the steps read from disk; ``--cache warm`` first reads the files once, so they are
cached. The rows report the bytes read from disk (``ru_inblock`` of the process and its
finished workers) and the major page faults.

Prints markdown tables (memory, then time); ``--out FILE.json`` keeps the rows.
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
        "format": BANK_FORMAT,
        "teacher": "synthetic",
        "modality": modality,
        "dim": DIM,
        "num_rows": rows,
        "fingerprint": f"synthetic-{rows}",
        "dtype": "float16",
    }
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


def load_into_page_cache(root: Path) -> None:
    """Read the bank and table files once, so that their pages are cached."""
    for path in root.glob("*/*.npy"):
        with open(path, "rb") as file:
            while file.read(64 << 20):
                pass


def disk_read_blocks() -> int:
    """512-byte blocks read from storage by this process and its finished children."""
    return sum(
        resource.getrusage(who).ru_inblock
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )


def major_faults() -> int:
    return sum(
        resource.getrusage(who).ru_majflt
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )


class TimedTransform:
    """A :class:`~clip_ping.guidance.NeighborTransform` that also says how long it took."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, batch: dict) -> dict:
        import torch

        started = time.perf_counter()
        batch = self.transform(batch, 0)
        return {**batch, "reader_seconds": torch.tensor(time.perf_counter() - started)}


def anchor_batches(anchors, path: str, guidance, workers: int):
    """``(batch, wait_seconds)`` per step: the anchors ``(steps, B)`` as the loop gets them,
    from a DataLoader with ``workers`` workers (one epoch). ``workers``
    path: the workers also draw the neighbours and read the rows; ``loop`` path: they
    deliver the bare indices."""
    import torch

    from clip_ping.data.bad_samples import collate_good

    steps, batch_size = anchors.shape
    samples = [{"index": int(i)} for i in anchors.reshape(-1)]
    reader = TimedTransform(guidance.transform()) if path == "workers" else None
    loader = torch.utils.data.DataLoader(
        samples,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=lambda samples: (
            reader(collate_good(samples)) if reader else collate_good(samples)
        ),
    )
    batches = iter(loader)
    for _ in range(steps):
        started = time.perf_counter()
        batch = next(batches)
        yield batch, time.perf_counter() - started


def measure(
    root: Path, steps: int, batch_size: int, advice: str, cold: bool, path: str, workers: int
) -> dict:
    """Run ``steps`` CLIP-PING steps over the banks in ``root``; memory and time."""
    import torch

    from clip_ping.bank import FEATURES, NEIGHBORS, Bank
    from clip_ping.guidance import NeighborGuidance
    from clip_ping.losses import ClipLoss, NeighborLoss, total
    from clip_ping.models import create_model
    from clip_ping.training.task import ContrastiveStep

    before_import = status_mib()
    torch.manual_seed(0)
    model, tokenizer = create_model("cpu-micro-32", seed=0)
    image_bank, text_bank = Bank(root / "image"), Bank(root / "text")
    guidance = NeighborGuidance(image_bank, text_bank, k=K, target="bank", seed=0)
    if advice == "normal" and path == "workers":
        raise ValueError("--madvise normal is measured on the loop path only")
    if advice == "normal":  # undo what NeighborGuidance advised, for the comparison
        for array in (guidance.image_features, guidance.text_features):
            array.base.madvise(mmap.MADV_NORMAL)  # mapped by clip_ping.bank.open_array
        for array in (guidance.image_neighbors, guidance.text_neighbors):
            array.base.madvise(mmap.MADV_NORMAL)
    loss = NeighborLoss(model.embed_dim, image_bank_dim=DIM, text_bank_dim=DIM, target="bank")
    step_module = ContrastiveStep(model, {"clip": ClipLoss(), "neighbor": loss})
    optimizer = torch.optim.AdamW(step_module.parameters(), lr=1e-4)
    num_rows = len(image_bank)
    anchors = torch.randint(
        0, num_rows, (steps, batch_size), generator=torch.Generator().manual_seed(0)
    )
    rng = torch.Generator().manual_seed(1)
    if cold:
        drop_from_page_cache(root)
    read_before, faults_before = disk_read_blocks(), major_faults()
    started = status_mib()
    peaks = dict(started)
    after_warmup: dict[str, float] = {}
    times: dict[str, list[float]] = {"step": [], "loop": [], "wait": [], "worker": []}
    batches = anchor_batches(anchors, path, guidance, workers)
    for step in range(steps):
        images = torch.randn(batch_size, 3, model.image_size, model.image_size, generator=rng)
        texts = torch.randint(0, tokenizer.vocab_size, (batch_size, 16), generator=rng)
        t0 = time.perf_counter()
        batch, waited = next(batches)
        t1 = time.perf_counter()
        targets = guidance.targets(batch, 0, torch.device("cpu"))
        t2 = time.perf_counter()
        terms, _ = step_module(images, texts, targets)
        total(terms, step_module.summed).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times["step"].append(time.perf_counter() - t0)
        times["loop"].append(t2 - t1)
        times["wait"].append(waited)
        if "reader_seconds" in batch:
            times["worker"].append(float(batch["reader_seconds"]))
        now = status_mib()
        peaks = {k: max(peaks[k], now[k]) for k in peaks}
        if step == 9:
            after_warmup = now
    del batches  # the loader's workers finish, so their reads count below
    end = status_mib()
    faults = major_faults() - faults_before
    read_mib = (disk_read_blocks() - read_before) * 512 / 2**20
    bank_bytes = sum(
        (root / m / f).stat().st_size for m in ("image", "text") for f in (FEATURES, NEIGHBORS)
    )
    return {
        "rows": num_rows,
        "steps": steps,
        "batch_size": batch_size,
        "madvise": advice,
        "cold": cold,
        "disk_read_mib": read_mib,
        "major_faults": faults,
        "bank_and_table_mib": bank_bytes / 2**20,
        "rss_anon_before_import_mib": before_import["RssAnon"],
        "rss_anon_start_mib": started["RssAnon"],
        "rss_anon_after_10_steps_mib": after_warmup.get("RssAnon", float("nan")),
        "rss_anon_end_mib": end["RssAnon"],
        "rss_anon_peak_mib": peaks["RssAnon"],
        "rss_file_start_mib": started["RssFile"],
        "rss_file_peak_mib": peaks["RssFile"],
        "vm_hwm_mib": end["VmHWM"],
        "path": path,
        "workers": workers,
        "ms_per_step": 1e3 * statistics.median(times["step"]),
        "ms_neighbors_in_loop": 1e3 * statistics.median(times["loop"]),
        "ms_neighbors_in_loop_mean": 1e3 * statistics.mean(times["loop"]),
        # The first batch waits for the workers to start (once per epoch): apart.
        "ms_wait_for_first_batch": 1e3 * times["wait"][0],
        "ms_wait_for_batch": 1e3 * statistics.median(times["wait"][1:] or [0.0]),
        "ms_wait_for_batch_mean": 1e3 * statistics.mean(times["wait"][1:] or [0.0]),
        "ms_neighbors_in_worker": 1e3 * statistics.median(times["worker"] or [float("nan")]),
        "ms_neighbors_in_worker_mean": 1e3 * statistics.mean(times["worker"] or [float("nan")]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[300_000, 3_000_000])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--madvise", nargs="+", default=["random", "normal"])
    parser.add_argument("--paths", nargs="+", default=["loop"], choices=["loop", "workers"])
    parser.add_argument("--workers", type=int, default=2, help="loader workers (workers path)")
    parser.add_argument("--cache", nargs="+", default=["warm"], choices=["warm", "cold"])
    parser.add_argument("--cold", action="store_true", help="the same as --cache cold")
    parser.add_argument("--work", default="/tmp/clip_ping_bank_scale")
    parser.add_argument("--out", default=None, help="JSON file for the rows")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    caches = ["cold"] if args.cold else args.cache
    if args.measure:
        result = measure(
            Path(args.measure),
            args.steps,
            args.batch_size,
            args.madvise[0],
            caches == ["cold"],
            args.paths[0],
            args.workers,
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
        for cache in caches:
            for advice in args.madvise:
                for path in args.paths:
                    if path == "workers" and advice != "random":
                        continue  # the workers' reader always maps with MADV_RANDOM
                    if cache == "warm":
                        load_into_page_cache(root)
                    options = {
                        "--measure": root,
                        "--steps": args.steps,
                        "--batch-size": args.batch_size,
                        "--madvise": advice,
                        "--paths": path,
                        "--workers": args.workers,
                        "--cache": cache,
                    }
                    command = [sys.executable, __file__]
                    command += [str(part) for option in options.items() for part in option]
                    child = subprocess.run(command, check=True, capture_output=True, text=True)
                    results.append(json.loads(child.stdout.strip().splitlines()[-1]))
                    print(json.dumps(results[-1]), flush=True)
    print_tables(results)
    if args.out:
        from clip_ping.io import atomic_write_text

        atomic_write_text(args.out, json.dumps(results, indent=1) + "\n")


def print_tables(results: list[dict]) -> None:
    """Memory, then time per step, as markdown; then the loop path's time over the workers'."""
    print(
        "\n| rows | banks + tables on disk (MiB) | path | madvise | cache | RssAnon at start "
        "| after 10 steps | peak | RssFile at start | peak | VmHWM | read from disk (MiB) "
        "| major faults |"
    )
    print("|---:|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['rows']:,} | {r['bank_and_table_mib']:,.0f} | {r['path']} | {r['madvise']} "
            f"| {'cold' if r['cold'] else 'warm'} "
            f"| {r['rss_anon_start_mib']:.0f} | {r['rss_anon_after_10_steps_mib']:.0f} "
            f"| {r['rss_anon_peak_mib']:.0f} | {r['rss_file_start_mib']:.0f} "
            f"| {r['rss_file_peak_mib']:.0f} | {r['vm_hwm_mib']:.0f} "
            f"| {r['disk_read_mib']:,.0f} | {r['major_faults']:,} |"
        )
    print(
        "\n| rows | path | madvise | cache | ms/step | neighbours in the loop: median "
        "| mean | waiting for the first batch | for the others: median | mean "
        "| in a worker, per batch: median | mean |"
    )
    print("|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['rows']:,} | {r['path']} | {r['madvise']} | {'cold' if r['cold'] else 'warm'} "
            f"| {r['ms_per_step']:.0f} | {r['ms_neighbors_in_loop']:.2f} "
            f"| {r['ms_neighbors_in_loop_mean']:.2f} | {r['ms_wait_for_first_batch']:.0f} "
            f"| {r['ms_wait_for_batch']:.2f} | {r['ms_wait_for_batch_mean']:.2f} "
            f"| {r['ms_neighbors_in_worker']:.1f} | {r['ms_neighbors_in_worker_mean']:.1f} |"
        )
    key = lambda r: (r["rows"], r["madvise"], r["cold"])  # noqa: E731
    loops = {key(r): r for r in results if r["path"] == "loop"}
    for r in (r for r in results if r["path"] == "workers" and key(r) in loops):
        loop = loops[key(r)]
        before, after = loop["ms_neighbors_in_loop_mean"], r["ms_neighbors_in_loop_mean"]
        transfer = r["ms_wait_for_batch"] - loop["ms_wait_for_batch"]
        print(
            f"{r['rows']:,} rows, {'cold' if r['cold'] else 'warm'}: neighbours in the loop "
            f"{before:.1f} -> {after:.2f} ms/step (mean; {before / after:.0f}x less), plus "
            f"{transfer:+.1f} ms median wait for the batch; step time "
            f"{r['ms_per_step'] / loop['ms_per_step']:.2f}x the loop path's"
        )


if __name__ == "__main__":
    main()

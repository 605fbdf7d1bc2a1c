"""GPU speed of the 224 px recipe: clip-ping against open_clip, CLIP-PING against CLIP, and
the data loader's decode rate against both.

    bash benchmarks/gpu_vs_open_clip.sh OUT_DIR          # sets up the peer venv, then runs this
    PYTHON=../peer-venv/bin/python bash benchmarks/gpu_vs_open_clip.sh /tmp/g --device cpu --tiny

Three measurements, written to ``OUT/gpu_vs_open_clip.json`` and ``.md``:

1. **clip-ping vs open_clip**: ``vit-xs-16`` at 224 px under bf16 autocast (``--precision
   amp_bf16``, as both trainers run it), each side's step as its users run it
   (``vs_open_clip.py``: the same towers, parameter counts asserted equal, our weights copied
   into open_clip's model, embeddings checked equal). The batch is the largest power of two up
   to ``--max-batch`` at which a step of both sides fits on the device. Interleaved rounds,
   ratio ours/open_clip per round: median and range.
2. **CLIP-PING's step overhead over CLIP** (target ≤ 3%): ``TrainingTask`` steps of CLIP,
   CLIP-PING with ``bank`` targets and with ``memory`` targets at the same batch, on inputs
   already on the device: neighbour draw, bank reads, memory writes, every loss term, backward
   and AdamW. Banks are random 1280-d / 384-d features over ``--num-train`` rows with exact
   top-10 tables (``gpu_smoke.prepare``), so no teacher weights are needed. Interleaved rounds.
3. **Decode rate**: samples/s one CPU core turns JPEG bytes into 224 px training tensors
   (``decode_rate.py``, shorter side 256 and 384 px), times the machine's cores, against the
   step rates above: the DataLoader workers a run needs to keep the GPU fed.

``--device cpu --tiny`` runs the same code on ``cpu-micro-32`` at small batches in about a
minute, to check the script without a GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from clip_ping.data.loader import DataSpec  # noqa: E402
from clip_ping.data.transforms import TrainTransform  # noqa: E402
from clip_ping.models import create_model  # noqa: E402
from clip_ping.training.config import build_config  # noqa: E402
from clip_ping.training.schedule import autocast_context, create_optimizer  # noqa: E402
from clip_ping.training.task import create_task  # noqa: E402
from decode_rate import jpeg_bytes, rate  # noqa: E402
from gpu_smoke import prepare  # noqa: E402
from levers import interleaved_rounds, ratio_cell, ratios  # noqa: E402
from train_step import StepBench  # noqa: E402
from vs_open_clip import OpenClipStep, check_same_towers  # noqa: E402

PING_VARIANTS = {
    "clip": {},
    "clip-ping bank": {"loss": "clip-ping", "neighbor_target": "bank"},
    "clip-ping memory": {"loss": "clip-ping", "neighbor_target": "memory"},
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fits(step, device: torch.device, tries: int = 2) -> bool:
    """Whether ``tries`` steps run without running out of device memory."""
    try:
        for _ in range(tries):
            step()
        synchronize(device)
        return True
    except torch.OutOfMemoryError:
        return False


def largest_batch(args, device: torch.device) -> int:
    """The largest power-of-two batch (≤ --max-batch) at which both sides' steps fit."""
    batch, best = args.min_batch, None
    while batch <= args.max_batch:
        ours = StepBench.create(args.model, batch, device=args.device, precision=args.precision)
        ok = fits(ours.step, device)
        if ok:
            theirs = OpenClipStep.create(ours)
            ok = fits(theirs.step, device)
            del theirs
        del ours
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(f"batch {batch}: {'fits' if ok else 'out of memory'}", flush=True)
        if not ok:
            break
        best, batch = batch, batch * 2
    if best is None:
        raise SystemExit(f"not even batch {args.min_batch} fits on {device}")
    return best


def versus_open_clip(args, device: torch.device, batch: int) -> dict:
    ours = StepBench.create(args.model, batch, device=args.device, precision=args.precision)
    theirs = OpenClipStep.create(ours)
    difference = check_same_towers(ours, theirs)
    steps = {"ours": ours.step, "open_clip": theirs.step}
    speeds = interleaved_rounds(
        steps,
        batch,
        args.rounds,
        args.steps_per_round,
        lambda: synchronize(device),
        warmup_steps=args.warmup_steps,
    )
    return {
        "batch_size": batch,
        "max_embedding_difference": difference,
        "samples_per_second_rounds": speeds,
        "ratio_rounds": ratios(speeds["ours"], speeds["open_clip"]),
    }


def ping_step(args, work: Path, train_csv: Path, batch: int, extra: dict):
    """A CLIP or CLIP-PING training step of ``TrainingTask`` on device-resident inputs."""
    device = torch.device(args.device)
    cfg = build_config(
        overrides=dict(
            train_data=str(train_csv),
            model=args.model,
            batch_size=batch,
            precision=args.precision,
            device=args.device,
            image_bank=str(work / "image_bank"),
            text_bank=str(work / "text_bank"),
            **extra,
        )
    )
    model, tokenizer = create_model(args.model, seed=0)
    model.to(device)
    task = create_task(cfg, model, DataSpec(str(train_csv)), device)
    optimizer = create_optimizer(task, cfg)
    generator = torch.Generator().manual_seed(0)
    size = model.image_size
    images = torch.randn(batch, 3, size, size, generator=generator).to(device)
    texts = torch.randint(0, tokenizer.vocab_size, (batch, tokenizer.context_length))
    texts = texts.to(device)
    state = {"step": 0}

    def step() -> None:
        indices = torch.randint(0, args.num_train, (batch,), generator=generator)
        with autocast_context(args.precision, device):
            loss, _, out = task({"image": images, "text": texts, "index": indices}, state["step"])
        loss.backward()
        task.remember(indices, out)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.clamp_logit_scale()
        state["step"] += 1

    return step


def ping_overhead(args, device: torch.device, batch: int) -> dict:
    work = Path(args.work)
    # The corpus only gives the banks their rows: the steps use random device-resident inputs.
    corpus = argparse.Namespace(num_train=args.num_train, image_size=32, device=args.device)
    train_csv = prepare(work, corpus)
    steps = {
        name: ping_step(args, work, train_csv, batch, extra)
        for name, extra in PING_VARIANTS.items()
    }
    speeds = interleaved_rounds(
        steps,
        batch,
        args.rounds,
        args.steps_per_round,
        lambda: synchronize(device),
        warmup_steps=args.warmup_steps,
    )
    return {
        "batch_size": batch,
        "samples_per_second_rounds": speeds,
        "overhead_rounds": {n: ratios(speeds["clip"], speeds[n]) for n in PING_VARIANTS},
    }


def decode_rates() -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a DataLoader worker
    per_core = {side: rate(jpeg_bytes(side), TrainTransform(224), True) for side in (256, 384)}
    torch.set_num_threads(threads)
    return {"per_core_samples_per_second": per_core, "cores": os.cpu_count()}


def report(args, versus: dict, ping: dict, decode: dict) -> str:
    sp = versus["samples_per_second_rounds"]
    ours, theirs = statistics.median(sp["ours"]), statistics.median(sp["open_clip"])
    lines = [
        f"{args.model}, {args.precision}, {args.device} ({device_name(args.device)}), torch "
        f"{torch.__version__}, {args.rounds} interleaved rounds × {args.steps_per_round} steps",
        "",
        "| | batch | open_clip samples/s | clip-ping samples/s | clip-ping / open_clip |",
        "|---|---:|---:|---:|---:|",
        f"| same towers ({versus['max_embedding_difference']:.1e} max embedding difference) "
        f"| {versus['batch_size']} | {theirs:.0f} | {ours:.0f} "
        f"| {ratio_cell(versus['ratio_rounds'])} |",
        "",
        "| variant | batch | samples/s | step time / CLIP's (target ≤ 1.03) |",
        "|---|---:|---:|---:|",
    ]
    for name, speeds in ping["samples_per_second_rounds"].items():
        lines.append(
            f"| {name} | {ping['batch_size']} | {statistics.median(speeds):.0f} "
            f"| {ratio_cell(ping['overhead_rounds'][name])} |"
        )
    lines += [
        "",
        f"| JPEG shorter side | decode samples/s per core | × {decode['cores']} cores "
        "| cores for clip-ping CLIP | cores for CLIP-PING bank |",
        "|---:|---:|---:|---:|---:|",
    ]
    clip = statistics.median(ping["samples_per_second_rounds"]["clip"])
    bank = statistics.median(ping["samples_per_second_rounds"]["clip-ping bank"])
    for side, per_core in decode["per_core_samples_per_second"].items():
        lines.append(
            f"| {side} | {per_core:.0f} | {per_core * decode['cores']:.0f} "
            f"| {math.ceil(clip / per_core)} | {math.ceil(bank / per_core)} |"
        )
    return "\n".join(lines)


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"{os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_vs_open_clip_out"))
    parser.add_argument("--work", help="scratch folder for corpus and banks (default OUT/work)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="vit-xs-16")
    parser.add_argument("--precision", default="amp_bf16", choices=["fp32", "amp_bf16", "amp"])
    parser.add_argument("--min-batch", type=int, default=256)
    parser.add_argument("--max-batch", type=int, default=4096)
    parser.add_argument("--num-train", type=int, default=8192, help="bank rows")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps-per-round", type=int, default=5)
    parser.add_argument("--warmup-steps", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch threads for CPU runs")
    parser.add_argument("--tiny", action="store_true", help="cpu-micro-32, small batches")
    args = parser.parse_args(argv)
    if args.tiny:
        args.model, args.min_batch, args.max_batch, args.num_train = "cpu-micro-32", 16, 32, 512
        args.rounds, args.steps_per_round, args.warmup_steps = 3, 1, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    args.work = args.work or str(args.out / "work")
    device = torch.device(args.device)
    # TF32 stays at torch's default, as clip-ping leaves it (open_clip_train turns it on; under
    # bf16 autocast it touches only the few fp32 matmuls of both sides alike).
    started = time.perf_counter()
    batch = largest_batch(args, device)
    versus = versus_open_clip(args, device, batch)
    print(f"clip-ping vs open_clip done ({time.perf_counter() - started:.0f} s)", flush=True)
    try:
        ping = ping_overhead(args, device, batch)
    except torch.OutOfMemoryError:  # CLIP-PING's heads and targets did not fit beside
        torch.cuda.empty_cache()
        ping = ping_overhead(args, device, batch // 2)
    print(f"CLIP-PING overhead done ({time.perf_counter() - started:.0f} s)", flush=True)
    decode = decode_rates()
    text = report(args, versus, ping, decode)
    print("\n" + text)
    (args.out / "gpu_vs_open_clip.md").write_text(text + "\n")
    settings = {k: str(v) for k, v in vars(args).items()}
    (args.out / "gpu_vs_open_clip.json").write_text(
        json.dumps(
            {
                "settings": settings,
                "torch": torch.__version__,
                "device": device_name(args.device),
                "wall_seconds": time.perf_counter() - started,
                "versus_open_clip": versus,
                "clip_ping_overhead": ping,
                "decode": decode,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"\nwrote {args.out}/gpu_vs_open_clip.md and .json")


if __name__ == "__main__":
    main()

"""Inference cost of each model of the results page: the accuracy–cost table's cost columns.

    .venv/bin/python benchmarks/model_costs.py --out docs/data/model_costs.json

For the demo's students (the ViT, ConvNeXt and MobileViT of docs/results.md) and the
teachers' ceiling (``locked-teachers``: EfficientNet-Lite0 at the demo's 128 px, MiniLM,
linear heads): parameters of each tower (a student's tower with its projection; the
ceiling's frozen teacher with its head), image-tower GFLOPs per image at the model's input
size (``FlopCounterMode``, eager attention), and CPU throughput at inference
(``torch.inference_mode``) of the image tower and of the text tower at batch 1 and batch 64:
the median of timed repeats after warm-up, on the threads torch uses here. Text batches are
captions of the demo's kind (8 to 12 words). Run it on a quiet machine: a second job on the
cores halves the rates.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from clip_ping.models import LockedSpec, create_model

STUDENTS = {
    "cpu-mini-32": "ViT (demo student)",
    "cpu-convnext-mini-32": "ConvNeXt",
    "cpu-mobilevit-mini-64": "MobileViT",
}
CEILING = "locked-teachers"
DEMO_TEACHER_SIZE = 128  # experiments/demo.py IMAGE_TEACHER_SIZE
WORDS = "red blue green small large smiling face cat car tree house flag hand with a of the"


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def build(name: str):
    """The model, its tokenizer, and its towers' parameter counts."""
    if name == CEILING:
        model, tokenizer = create_model(name, spec=LockedSpec(teacher_image_size=DEMO_TEACHER_SIZE))
        # EfficientNet-Lite0's classifier (_fc) is not part of the features
        image = sum(
            p.numel() for n, p in model.image_teacher.model.named_parameters() if "_fc." not in n
        )
        image += count(model.image_head)
        text = count(model.text_teacher.model) + count(model.text_head)
        return model.eval(), tokenizer, image, text
    model, tokenizer = create_model(name, seed=0)
    if model.tower == "vit":
        clip = model.clip
        image = count(clip.vision_model) + count(clip.visual_projection)
        text = count(clip.text_model) + count(clip.text_projection)
    else:
        image = count(model.vision) + count(model.visual_projection)
        text = count(model.text)
    return model.eval(), tokenizer, image, text


def image_gflops(model, size: int) -> float:
    """GFLOPs of one image through the image tower (eager attention: SDPA has no formula)."""
    if model.tower == "vit":
        model.clip.set_attn_implementation("eager")
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.encode_image(torch.rand(1, 3, size, size))
    if model.tower == "vit":
        model.clip.set_attn_implementation("sdpa")
    return counter.get_total_flops() / 1e9


def rate(fn, items: int, min_seconds: float = 2.0) -> float:
    """Items per second of ``fn()``: the median of timed repeats after two warm-up calls."""
    with torch.inference_mode():
        fn(), fn()
        times, start = [], time.perf_counter()
        while time.perf_counter() - start < min_seconds or len(times) < 5:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return items / statistics.median(times)


def captions(count: int, rng: random.Random) -> list[str]:
    words = WORDS.split()
    return [" ".join(rng.choices(words, k=rng.randint(8, 12))) for _ in range(count)]


def measure(name: str, rng: random.Random) -> dict:
    model, tokenizer, image_params, text_params = build(name)
    size = model.image_size
    row = {
        "model": name,
        "image_size": size,
        "image_params": image_params,
        "text_params": text_params,
        "image_gflops": image_gflops(model, size),
    }
    for batch in (1, 64):
        pixels = torch.rand(batch, 3, size, size)
        tokens = tokenizer(captions(batch, rng))
        row[f"images_per_s_b{batch}"] = rate(functools.partial(model.encode_image, pixels), batch)
        row[f"texts_per_s_b{batch}"] = rate(functools.partial(model.encode_text, tokens), batch)
    return row


def table(rows: list[dict]) -> str:
    lines = [
        "| model | image px | image tower params | text tower params | image GFLOPs | "
        "images/s b1 | images/s b64 | texts/s b1 | texts/s b64 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['model']}` | {r['image_size']} | {r['image_params'] / 1e6:.2f} M | "
            f"{r['text_params'] / 1e6:.2f} M | {r['image_gflops']:.3f} | "
            f"{r['images_per_s_b1']:.0f} | {r['images_per_s_b64']:.0f} | "
            f"{r['texts_per_s_b1']:.0f} | {r['texts_per_s_b64']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the rows")
    parser.add_argument("--models", nargs="+", default=[*STUDENTS, CEILING])
    args = parser.parse_args(argv)
    rng = random.Random(0)
    rows = [measure(name, rng) for name in args.models]
    print(table(rows))
    if args.out is not None:
        cpu = next(
            (ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if "model name" in ln),
            platform.processor(),
        )
        record = {
            "command": "python benchmarks/model_costs.py --out " + str(args.out),
            "machine": {"cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__},
            "rows": rows,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"\nwritten: {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()

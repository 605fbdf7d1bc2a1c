"""Training-step speed of clip-ping against open_clip on the same towers (CPU, fp32).

    ../peer-venv/bin/python benchmarks/vs_open_clip.py --out /tmp/vs_open_clip.json

open_clip does not import beside the project's pinned torch, so this runs in a peer
virtualenv that holds both (recipe in benchmarks/README.md); clip-ping's ``src/`` is put on
``sys.path``. Each side runs a step as its users do:

- clip-ping: ``create_model``, ``ClipLoss``, ``create_optimizer`` (fused AdamW, the default
  ``TrainConfig``), ``clamp_logit_scale()`` (``benchmarks/train_step.py``'s step);
- open_clip: ``open_clip.create_model`` on a model config written from our
  ``ModelSpec`` (widths, depths, heads, patch and image size, context length, our tokenizer's
  vocabulary, embed dim, QuickGELU as CLIP and transformers' CLIP, pooling at the first
  ``[SEP]``), ``output_dict=True``, open_clip's ``ClipLoss``, ``torch.optim.AdamW`` with
  open_clip_train's parameter groups and the same hyper-parameters, and its
  ``logit_scale.clamp_(0, ln 100)`` after the step.

The towers are the same: the parameter counts are asserted equal, our initial weights are
copied into the open_clip model, and both must give the same embeddings on the benchmark's
batch before anything is timed. Inputs are random pixels and real token ids. After warm-up
steps, each round times ``--steps-per-round`` steps of each side per configuration, the order
reversed every other round (``levers.interleaved_rounds``); the ratio ours/open_clip of samples/s is taken within each
round, and the table gives its median and range over rounds.

``--variants`` adds variants of clip-ping's step (``levers.VARIANTS``, e.g. ``plain``:
transformers' own CLIP forward, without the levers of ``clip_ping.models.vit_fast``) to the same rounds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import open_clip  # noqa: E402
import torch  # noqa: E402

from clip_ping.models import MAX_LOGIT_SCALE, MODEL_SPECS, ClipStudent, ModelSpec  # noqa: E402
from clip_ping.training.config import TrainConfig  # noqa: E402
from clip_ping.training.schedule import autocast_context  # noqa: E402
from levers import (  # noqa: E402
    VARIANTS,
    add_round_flags,
    embedding_difference,
    interleaved_rounds,
    parse_config,
    ratio_cell,
    ratios,
    write_record,
)
from train_step import StepBench, parameter_count  # noqa: E402

DEFAULT_CONFIGS = ["cpu-mini-32:128", "cpu-small-64:128", "vit-ti-16:16"]
EMBEDDING_ATOL = 1e-4  # same towers, same weights: embeddings agree to float rounding


def open_clip_config(spec: ModelSpec, vocab_size: int, eos_id: int) -> dict:
    """open_clip's model config for the towers of ``spec`` (transformers' CLIP layout)."""
    return {
        "embed_dim": spec.embed_dim,
        "quick_gelu": True,  # transformers' CLIP default activation, x * sigmoid(1.702 x)
        "vision_cfg": {
            "image_size": spec.image_size,
            "patch_size": spec.patch_size,
            "width": spec.vision_width,
            "layers": spec.vision_layers,
            "head_width": spec.vision_width // spec.vision_heads,
            "mlp_ratio": spec.mlp_ratio,
        },
        "text_cfg": {
            "context_length": spec.context_length,
            "vocab_size": vocab_size,
            "width": spec.text_width,
            "heads": spec.text_heads,
            "layers": spec.text_layers,
            "mlp_ratio": spec.mlp_ratio,
            "pool_type": "eos",  # transformers' CLIP pools at the first eos token too
            "eos_id": eos_id,
        },
    }


def create_open_clip(name: str, model_cfg: dict) -> torch.nn.Module:
    """``open_clip.create_model`` as a user with their own model config calls it."""
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / f"bench-{name}.json").write_text(json.dumps(model_cfg))
        open_clip.add_model_config(folder)
        return open_clip.create_model(f"bench-{name}", output_dict=True)


def copy_weights(ours: ClipStudent, theirs: torch.nn.Module) -> None:
    """Load our transformers CLIPModel's weights into the open_clip model (q, k, v become
    ``in_proj``; projections are stored transposed)."""
    hf = {k: v.detach() for k, v in ours.clip.state_dict().items()}
    mapped = {"logit_scale": hf["logit_scale"]}

    def blocks(hf_prefix: str, prefix: str, layers: int) -> None:
        for i in range(layers):
            a, b = f"{hf_prefix}.encoder.layers.{i}", f"{prefix}transformer.resblocks.{i}"
            for end in ("weight", "bias"):
                mapped[f"{b}.attn.in_proj_{end}"] = torch.cat(
                    [hf[f"{a}.self_attn.{p}_proj.{end}"] for p in "qkv"]
                )
                for ours_name, name in (
                    ("self_attn.out_proj", "attn.out_proj"),
                    ("layer_norm1", "ln_1"),
                    ("layer_norm2", "ln_2"),
                    ("mlp.fc1", "mlp.c_fc"),
                    ("mlp.fc2", "mlp.c_proj"),
                ):
                    mapped[f"{b}.{name}.{end}"] = hf[f"{a}.{ours_name}.{end}"]

    vision = ours.clip.config.vision_config
    blocks("vision_model", "visual.", vision.num_hidden_layers)
    mapped |= {
        "visual.class_embedding": hf["vision_model.embeddings.class_embedding"],
        "visual.conv1.weight": hf["vision_model.embeddings.patch_embedding.weight"],
        "visual.positional_embedding": hf["vision_model.embeddings.position_embedding.weight"],
        "visual.proj": hf["visual_projection.weight"].T,
        "token_embedding.weight": hf["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": hf["text_model.embeddings.position_embedding.weight"],
        "text_projection": hf["text_projection.weight"].T,
    }
    for end in ("weight", "bias"):
        mapped[f"visual.ln_pre.{end}"] = hf[f"vision_model.pre_layrnorm.{end}"]
        mapped[f"visual.ln_post.{end}"] = hf[f"vision_model.post_layernorm.{end}"]
        mapped[f"ln_final.{end}"] = hf[f"text_model.final_layer_norm.{end}"]
    blocks("text_model", "", ours.clip.config.text_config.num_hidden_layers)
    theirs.load_state_dict({k: v.contiguous().clone() for k, v in mapped.items()})


def no_decay(name: str, param: torch.Tensor) -> bool:
    """open_clip_train's parameters without weight decay: gains, biases, the logit scale."""
    return param.ndim < 2 or any(part in name for part in ("bn", "ln", "bias", "logit_scale"))


@dataclass
class OpenClipStep:
    """open_clip's training step on the same inputs as a :class:`StepBench`."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: torch.nn.Module
    images: torch.Tensor
    texts: torch.Tensor
    precision: str = "fp32"

    @classmethod
    def create(cls, bench: StepBench) -> OpenClipStep:
        tokenizer_vocab = bench.model.clip.config.text_config.vocab_size
        eos_id = bench.model.clip.config.text_config.eos_token_id
        cfg = open_clip_config(MODEL_SPECS[bench.name], tokenizer_vocab, eos_id)
        model = create_open_clip(bench.name, cfg)
        ours, theirs = parameter_count(bench.model), parameter_count(model)
        assert ours == theirs, f"{bench.name}: {ours:,} parameters here, {theirs:,} in open_clip"
        copy_weights(bench.model, model)
        model.to(bench.images.device).train()
        train = TrainConfig()
        named = list(model.named_parameters())
        groups = [
            {"params": [p for n, p in named if no_decay(n, p)], "weight_decay": 0.0},
            {"params": [p for n, p in named if not no_decay(n, p)], "weight_decay": train.wd},
        ]
        optimizer = torch.optim.AdamW(
            groups, lr=train.lr, betas=(train.beta1, train.beta2), eps=train.eps
        )
        loss_fn = open_clip.ClipLoss()
        return cls(model, optimizer, loss_fn, bench.images, bench.texts, bench.precision)

    def step(self) -> None:
        self.optimizer.zero_grad()
        with autocast_context(self.precision, self.images.device):  # open_clip_train's autocast
            out = self.model(self.images, self.texts)
            losses = self.loss_fn(**out, output_dict=True)
        sum(losses.values()).backward()
        self.optimizer.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, math.log(MAX_LOGIT_SCALE))


def check_same_towers(bench: StepBench, theirs: OpenClipStep) -> float:
    """Largest embedding difference between the two models on the benchmark batch."""
    difference = embedding_difference(bench, theirs)
    assert difference < EMBEDDING_ATOL, f"{bench.name}: embeddings differ by {difference:.2e}"
    return difference


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configs",
        nargs="+",
        type=parse_config,
        default=[parse_config(c) for c in DEFAULT_CONFIGS],
        metavar="MODEL:BATCH",
        help=f"default: {' '.join(DEFAULT_CONFIGS)}",
    )
    parser.add_argument(
        "--variants",
        nargs="*",
        default=[],
        choices=[v for v in VARIANTS if v != "shipped"],
        help="further clip-ping variants timed in the same rounds",
    )
    add_round_flags(parser)
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    sides = ["ours", *args.variants]

    rows = []
    started = time.perf_counter()
    for name, batch in args.configs:
        ours = StepBench.create(name, batch)
        theirs = OpenClipStep.create(ours)
        steps = {"ours": ours.step, "open_clip": theirs.step}
        steps |= {v: StepBench.create(name, batch, VARIANTS[v]).step for v in args.variants}
        difference = check_same_towers(ours, theirs)
        speeds = interleaved_rounds(
            steps, batch, args.rounds, args.steps_per_round, warmup_steps=args.warmup_steps
        )
        rows.append(
            {
                "model": name,
                "batch_size": batch,
                "params": parameter_count(ours.model),
                "max_embedding_difference": difference,
                "samples_per_second_rounds": speeds,
                "ratio_rounds": {s: ratios(speeds[s], speeds["open_clip"]) for s in sides},
            }
        )

    print(
        f"torch {torch.__version__}, open_clip {open_clip.__version__}, "
        f"{torch.get_num_threads()} threads, fp32, {args.rounds} rounds × "
        f"{args.steps_per_round} steps, load {load_before[0]:.2f} → {os.getloadavg()[0]:.2f}, "
        f"{time.perf_counter() - started:.0f} s\n"
    )
    header = "| model | batch | params (M) | open_clip samples/s |"
    header += "".join(f" {s} samples/s | {s} / open_clip |" for s in sides)
    print(header + "\n|---|---:|---:|---:|" + "---:|---:|" * len(sides))
    for row in rows:
        speeds = row["samples_per_second_rounds"]
        cells = "".join(
            f" {statistics.median(speeds[s]):.0f} | {ratio_cell(row['ratio_rounds'][s])} |"
            for s in sides
        )
        print(
            f"| {row['model']} | {row['batch_size']} | {row['params'] / 1e6:.2f} "
            f"| {statistics.median(speeds['open_clip']):.0f} |{cells}"
        )
    print(
        "\nsame towers: parameter counts equal; largest embedding difference, same weights: "
        + ", ".join(f"{r['model']} {r['max_embedding_difference']:.1e}" for r in rows)
    )
    if args.out:
        write_record(args.out, args, load_before, rows, open_clip=open_clip.__version__)


if __name__ == "__main__":
    main()

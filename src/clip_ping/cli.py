"""``clip-ping <command>``: parse the arguments, call one module. Nothing else lives here."""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__


def _data_shapes(args: argparse.Namespace) -> None:
    from .data.shapes import build_shapes

    paths = build_shapes(
        args.out, num_train=args.num_train, num_val=args.num_val,
        image_size=args.image_size, seed=args.seed,
    )  # fmt: skip
    print(f"shapes corpus in {args.out}: {paths}")


def _train(args: argparse.Namespace) -> None:
    from .config import build_config
    from .train import train

    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "func", "config")}
    run_dir = train(build_config(args.config, overrides))
    if os.environ.get("RANK", "0") == "0":
        print(f"run folder: {run_dir}")


def _tokenizer_train(args: argparse.Namespace) -> None:
    from .data.loader import DataSpec, read_captions
    from .tokenizer import train_tokenizer

    spec = DataSpec(
        args.train_data, args.dataset_type, csv_caption_key=args.csv_caption_key,
        csv_img_key=args.csv_img_key, csv_separator=args.csv_separator,
    )  # fmt: skip
    captions = read_captions(spec)
    tokenizer = train_tokenizer(captions, vocab_size=args.vocab_size)
    tokenizer.save_pretrained(args.out)
    print(
        f"{tokenizer.vocab_size}-token WordPiece vocabulary from {len(captions)} captions in {args.out}"
    )


def _demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(args.out, quick=args.quick)


def build_parser() -> argparse.ArgumentParser:
    from .config import add_arguments

    parser = argparse.ArgumentParser(
        prog="clip-ping", description="Train lightweight CLIP models with neighbour guidance."
    )
    parser.add_argument("--version", action="version", version=f"clip-ping {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="build corpora").add_subparsers(
        dest="corpus", required=True
    )
    shapes = data.add_parser("shapes", help="synthetic coloured-shapes corpus (tests, smoke runs)")
    shapes.add_argument("--out", required=True, help="output folder")
    shapes.add_argument("--num-train", type=int, default=2000)
    shapes.add_argument("--num-val", type=int, default=500)
    shapes.add_argument("--image-size", type=int, default=64)
    shapes.add_argument("--seed", type=int, default=0)
    shapes.set_defaults(func=_data_shapes)

    tokenizer = commands.add_parser("tokenizer", help="student tokenizers").add_subparsers(
        dest="action", required=True
    )
    tok_train = tokenizer.add_parser(
        "train",
        help="a small WordPiece vocabulary from the training captions (use: --tokenizer OUT)",
    )
    tok_train.add_argument("--train-data", required=True, help="CSV/TSV or WebDataset shards")
    tok_train.add_argument("--dataset-type", default="auto", help="csv | webdataset | auto")
    tok_train.add_argument("--csv-img-key", default="filepath")
    tok_train.add_argument("--csv-caption-key", default="title")
    tok_train.add_argument("--csv-separator", default=None)
    tok_train.add_argument("--vocab-size", type=int, default=2000)
    tok_train.add_argument("--out", required=True, help="output folder")
    tok_train.set_defaults(func=_tokenizer_train)

    train = commands.add_parser(
        "train", help="train a student", description="Flags override values from --config."
    )
    train.add_argument("--config", default=None, help="YAML file of settings (flags override it)")
    add_arguments(train)
    train.set_defaults(func=_train)

    demo = commands.add_parser("demo", help="the main job: corpus → training → evaluation")
    demo.add_argument("--out", default="runs/demo", help="output folder")
    demo.add_argument("--quick", action="store_true", help="a smaller, faster run")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"clip-ping: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

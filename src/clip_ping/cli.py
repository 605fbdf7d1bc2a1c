"""``clip-ping <command>``: parse the arguments, call one module. Nothing else lives here."""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from . import __version__
from .errors import describe_failure
from .experiments.commands import add_experiment_commands
from .flags import COUNT, SEED_RANGE, Range, typed

# argparse types of the numeric flags that are no config field, each with its allowed range.
SEED = typed(int, SEED_RANGE)


def _data_shapes(args: argparse.Namespace) -> None:
    from .data.shapes import build_shapes

    paths = build_shapes(
        args.out,
        num_train=args.num_train,
        num_val=args.num_val,
        image_size=args.image_size,
        seed=args.seed,
    )
    print(f"shapes corpus in {args.out}: {paths}")


def _data_karpathy(args: argparse.Namespace) -> None:
    from .evaluation.karpathy import karpathy_to_csv

    count = karpathy_to_csv(args.json, args.images, args.out, args.split)
    print(f"{count:,} {args.split} images with their captions in {args.out}")


def _data_demo(args: argparse.Namespace) -> None:
    from .experiments.demo_corpus import build_demo_corpus

    info = build_demo_corpus(
        args.out,
        assets=args.assets,
        max_concepts=args.max_concepts,
        max_clipart=args.max_clipart,
        seed=args.seed,
    )
    counts = info["counts"]
    groups = counts["groups"]
    print(
        f"demo corpus in {args.out}{' (already built)' if info['cached'] else ''}: "
        f"{counts['concepts']:,} emoji concepts, {counts['clipart_kept']:,} drawings; groups "
        f"train {groups['train']:,} / val {groups['val']:,} / test {groups['test']:,}; rows: "
        + ", ".join(f"{name} {n:,}" for name, n in counts.items() if name.endswith("_rows"))
    )


def _train(args: argparse.Namespace) -> None:
    from .flags import namespace_values
    from .training.config import TrainConfig, build_config
    from .training.train import train

    run_dir = train(build_config(args.config, namespace_values(args, TrainConfig)))
    if os.environ.get("RANK", "0") == "0":
        print(f"run folder: {run_dir}")


def _tokenizer_train(args: argparse.Namespace) -> None:
    from .data.loader import read_captions
    from .tokenizer import train_tokenizer

    captions = read_captions(_data_spec(args))
    tokenizer = train_tokenizer(captions, vocab_size=args.vocab_size)
    tokenizer.save_pretrained(args.out)
    print(
        f"{tokenizer.vocab_size}-token WordPiece vocabulary from {len(captions)} captions in {args.out}"
    )


def _bank_build(args: argparse.Namespace) -> None:
    from .bank import build_bank
    from .distributed import cleanup, init_distributed
    from .io import explained_writes

    spec = _data_spec(args)
    info = init_distributed(args.device)
    try:
        with explained_writes(args.out, "rerun the same command to resume the build"):
            out = build_bank(
                spec,
                args.modality,
                args.out,
                teacher=args.teacher,
                image_size=args.image_size,
                batch_size=args.batch_size,
                workers=args.workers,
                chunk_rows=args.chunk_rows,
                device=info.device,
            )
    finally:
        cleanup()
    if info.is_main:
        print(f"{args.modality} bank in {out}")


def _bank_neighbors(args: argparse.Namespace) -> None:
    from .bank import NEIGHBORS, caption_groups, mine_bank
    from .io import explained_writes

    groups = None
    if args.exclude_same_caption:
        from .data.loader import DataSpec, read_captions

        groups = caption_groups(read_captions(DataSpec(args.exclude_same_caption)))
    with explained_writes(args.bank, f"rerun clip-ping bank neighbors {args.bank} --k {args.k}"):
        result = mine_bank(
            args.bank,
            args.k,
            backend=args.backend,
            device=args.device,
            nlist=args.nlist,
            nprobe=args.nprobe,
            recall_sample=args.recall_sample,
            exclude_groups=groups,
            paired_bank=args.exclude_skipped_of,
        )
    rate = len(result.neighbors) / max(result.seconds, 1e-9)
    print(
        f"top-{args.k} neighbours of {len(result.neighbors):,} rows with {result.backend} in "
        f"{result.seconds:.1f} s ({rate:,.0f} rows/s) → {args.bank}/{NEIGHBORS}"
    )


def _bank_show(args: argparse.Namespace) -> None:
    from .experiments.contact_sheet import contact_sheet

    contact_sheet(
        args.image_bank,
        args.text_bank,
        _data_spec(args),
        args.out,
        num_anchors=args.num_anchors,
        num_neighbors=args.num_neighbors,
        seed=args.seed,
    )
    print(f"contact sheet in {args.out}")


READ_FLAGS = ("train_data", "dataset_type", "csv_img_key", "csv_caption_key", "csv_separator")


def _add_data_flags(parser: argparse.ArgumentParser, extra: tuple[str, ...] = ()) -> None:
    """The training-data flags, from their one source (DataSpec's fields)."""
    from .data.loader import DataSpec
    from .flags import add_arguments

    add_arguments(
        parser, DataSpec, only=READ_FLAGS + extra, required=("train_data",), suppress_defaults=False
    )


def _data_spec(args: argparse.Namespace):
    """The DataSpec of the data flags in ``args``."""
    from .data.loader import DataSpec
    from .flags import namespace_values

    return DataSpec(**namespace_values(args, DataSpec))


def _add_bank_commands(commands: argparse._SubParsersAction) -> None:
    bank = commands.add_parser(
        "bank", help="teacher feature banks and neighbour tables"
    ).add_subparsers(dest="action", required=True)
    build = bank.add_parser(
        "build", help="embed the training set with a frozen teacher (resumable; torchrun shards)"
    )
    _add_data_flags(build, extra=("on_bad_sample", "max_bad_share"))
    build.add_argument("--modality", required=True, choices=("image", "text"))
    build.add_argument(
        "--teacher",
        default=None,
        help="efficientnet-lite0 (image default) | minilm (text default) | hf:NAME_OR_DIR | "
        "sentence-transformers:DIR | npy:FILE",
    )
    build.add_argument("--out", required=True, help="bank folder")
    build.add_argument(
        "--image-size",
        type=typed(int, Range(32, 1024)),
        default=None,
        help="efficientnet-lite0 input size (224)",
    )
    build.add_argument("--batch-size", type=COUNT, default=64)
    build.add_argument(
        "--workers",
        type=typed(int, Range(0)),
        default=2,
        help="data loader workers (at most what the machine can run)",
    )
    build.add_argument(
        "--chunk-rows", type=COUNT, default=4096, help="rows per flushed, resumable chunk"
    )
    build.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    build.set_defaults(func=_bank_build)

    neighbors = bank.add_parser("neighbors", help="top-K neighbours of every bank row")
    neighbors.add_argument("bank", help="bank folder")
    neighbors.add_argument("--k", type=COUNT, default=10)
    neighbors.add_argument(
        "--backend", default="auto", choices=("auto", "exact", "faiss-flat", "faiss-ivf")
    )
    neighbors.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    neighbors.add_argument("--nlist", type=COUNT, default=None, help="faiss-ivf lists (4·√N)")
    neighbors.add_argument("--nprobe", type=COUNT, default=32, help="faiss-ivf lists probed")
    neighbors.add_argument(
        "--recall-sample",
        type=typed(int, Range(0)),
        default=1000,
        help="queries for the recall check (0: none)",
    )
    neighbors.add_argument(
        "--exclude-same-caption",
        metavar="TRAIN_DATA",
        default=None,
        help="no neighbour has the anchor's exact caption in this data (the bank's own)",
    )
    neighbors.add_argument(
        "--exclude-skipped-of",
        metavar="OTHER_BANK",
        default=None,
        help="the other modality's bank of the same data: its skipped (bad) samples are no "
        "neighbours either (training also passes them over)",
    )
    neighbors.set_defaults(func=_bank_neighbors)

    show = bank.add_parser("show", help="contact sheet PNG of anchors and their neighbours")
    show.add_argument("--image-bank", required=True)
    show.add_argument("--text-bank", required=True)
    _add_data_flags(show)
    show.add_argument("--out", required=True, help="PNG file")
    show.add_argument("--num-anchors", type=COUNT, default=8)
    show.add_argument("--num-neighbors", type=COUNT, default=4, help="per modality")
    show.add_argument("--seed", type=SEED, default=0)
    show.set_defaults(func=_bank_show)


def _add_explore_command(commands: argparse._SubParsersAction) -> None:
    from .explore import command as explore_command

    explore = commands.add_parser(
        "explore",
        help="a local page comparing runs on an evaluation set (search, disagreements, ...)",
        description=explore_command.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    explore_command.add_arguments(explore)
    explore.set_defaults(func=explore_command.main)


def build_parser() -> argparse.ArgumentParser:
    from .flags import add_arguments
    from .training.config import TrainConfig

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
    shapes.add_argument("--num-train", type=COUNT, default=2000)
    shapes.add_argument("--num-val", type=COUNT, default=500)
    shapes.add_argument("--image-size", type=typed(int, Range(8, 1024)), default=64)
    shapes.add_argument("--seed", type=SEED, default=0)
    shapes.set_defaults(func=_data_shapes)
    karpathy = data.add_parser(
        "karpathy", help="Flickr30K / MSCOCO retrieval CSV from Karpathy's split file"
    )
    karpathy.add_argument("--json", required=True, help="dataset_flickr30k.json or _coco.json")
    karpathy.add_argument("--images", required=True, help="folder holding the images")
    karpathy.add_argument("--split", default="test", help="train | restval | val | test")
    karpathy.add_argument("--out", required=True, help="CSV file to write")
    karpathy.set_defaults(func=_data_karpathy)
    demo_data = data.add_parser(
        "demo", help="offline emoji + clip-art corpus from npm/Debian packages (make assets)"
    )
    demo_data.add_argument("--out", required=True, help="output folder")
    demo_data.add_argument(
        "--assets", default=None, help="asset folder (default: $CLIP_PING_ASSETS, else .assets)"
    )
    demo_data.add_argument(
        "--max-concepts", type=COUNT, default=None, help="emoji concepts kept (default: all)"
    )
    demo_data.add_argument(
        "--max-clipart",
        type=typed(int, Range(0)),
        default=None,
        help="clip-art drawings kept (default: all)",
    )
    demo_data.add_argument("--seed", type=SEED, default=0, help="salts the split hashes")
    demo_data.set_defaults(func=_data_demo)

    tokenizer = commands.add_parser("tokenizer", help="student tokenizers").add_subparsers(
        dest="action", required=True
    )
    tok_train = tokenizer.add_parser(
        "train",
        help="a small WordPiece vocabulary from the training captions (use: --tokenizer OUT)",
    )
    _add_data_flags(tok_train)
    tok_train.add_argument("--vocab-size", type=typed(int, Range(100)), default=2000)
    tok_train.add_argument("--out", required=True, help="output folder")
    tok_train.set_defaults(func=_tokenizer_train)

    train = commands.add_parser(
        "train", help="train a student", description="Flags override values from --config."
    )
    train.add_argument("--config", default=None, help="YAML file of settings (flags override it)")
    add_arguments(train, TrainConfig)
    train.set_defaults(func=_train)

    from .evaluation import run as evaluation_run  # its flags live beside the code using them

    evaluate = commands.add_parser(
        "eval",
        help="zero-shot, retrieval or linear probe of a run, checkpoint or hf/ folder → JSON",
        description=evaluation_run.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    evaluation_run.add_arguments(evaluate)
    evaluate.set_defaults(func=evaluation_run.main)

    for add_commands in (_add_bank_commands, _add_explore_command, add_experiment_commands):
        add_commands(commands)
    return parser


DEBUG_HELP = "show the traceback of a failure (for bug reports)"


def _add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """``--debug`` before the command and after it alike: on the top parser and on every
    sub-command (where an absent flag leaves the top parser's value)."""
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    pending = [parser]
    while pending:
        for action in pending.pop()._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    if not any("--debug" in a.option_strings for a in sub._actions):
                        sub.add_argument(
                            "--debug",
                            action="store_true",
                            default=argparse.SUPPRESS,
                            help=DEBUG_HELP,
                        )
                    pending.append(sub)


def main(argv: list[str] | None = None) -> int:
    """``clip-ping``: 0 on success; 2 for a bad input or setting, 1 for other failures
    (a one-line message each; ``--debug`` adds the traceback), 130 when interrupted."""
    parser = build_parser()
    _add_debug_flag(parser)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()
        print("clip-ping: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        message, status = describe_failure(exc, args.debug)
        print(f"clip-ping: error: {message}", file=sys.stderr)
        return status
    return 0


if __name__ == "__main__":
    sys.exit(main())

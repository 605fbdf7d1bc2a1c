"""``clip-ping explore``: runs side by side on one evaluation set, in a local page.

    clip-ping explore runs/demo/clip runs/demo/clip-ping --dataset SET.csv
    clip-ping explore RUN [RUN ...] --dataset SET --static DIR   # a folder that opens from disk

It listens on 127.0.0.1, on a free port (printed), unless --host or --port say otherwise.
With --image-bank, --text-bank and --train-data an image's view also shows the teachers'
neighbours of its nearest training samples. More in docs/explore.md.
"""

from __future__ import annotations

import argparse

from ..flags import Range, typed
from .embeddings import SetSpec

PORT = typed(int, Range(0, 65535))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``clip-ping explore`` flags."""
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders (or .pt / hf/)")
    parser.add_argument(
        "--dataset", required=True, help="evaluation set: .csv/.tsv, class folder or built-in"
    )
    parser.add_argument("--image-bank", default=None, help="the training data's image bank")
    parser.add_argument("--text-bank", default=None, help="the training data's text bank")
    parser.add_argument("--train-data", default=None, help="the training CSV of the banks")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback)")
    parser.add_argument("--port", type=PORT, default=0, help="port (0: a free one, printed)")
    parser.add_argument(
        "--static", default=None, metavar="DIR", help="write a folder that opens from disk instead"
    )
    parser.add_argument("--classnames", default=None, help="zero-shot class names file")
    parser.add_argument("--templates", default=None, help="zero-shot prompt templates file")
    parser.add_argument("--csv-img-key", default="filepath")
    parser.add_argument("--csv-caption-key", default="title")
    parser.add_argument("--csv-separator", default=None)


def main(args: argparse.Namespace) -> None:
    """Open the runs on the set, then serve the page or write the static folder."""
    from . import open_explorer, serve, write_static

    spec = SetSpec(
        dataset=args.dataset,
        classnames=args.classnames,
        templates=args.templates,
        csv_img_key=args.csv_img_key,
        csv_caption_key=args.csv_caption_key,
        csv_separator=args.csv_separator,
    )
    explorer = open_explorer(args.runs, spec, args.image_bank, args.text_bank, args.train_data)
    if args.static:
        index = write_static(explorer, args.static)
        print(f"static explorer of {explorer.data.name}: open {index}")
        return
    serve(explorer, args.host, args.port)

"""Typed command-line flags from dataclass fields: ``batch_size: int`` becomes
``--batch-size INT``, with the field's help (``metadata["help"]``), group and default.

The one mechanism behind ``clip-ping train`` (:class:`~clip_ping.config.TrainConfig`) and the
data flags every command shares (:class:`~clip_ping.data.loader.DataSpec`).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any


def field_type(annotation: Any) -> tuple[type, bool]:
    """(type, optional) of a field annotation such as ``int | None``."""
    hint = annotation
    if isinstance(hint, str):
        hint = eval(hint, {**vars(typing), "types": types})  # annotations are ours
    args = typing.get_args(hint)
    if args:
        non_none = [a for a in args if a is not type(None)]
        return non_none[0], len(non_none) < len(args)
    return hint, False


def _parser(kind: type, optional: bool):
    """argparse ``type=`` for a field: ``kind(text)``, and ``none`` for optional fields."""

    def parse(text: str) -> Any:
        if optional and text.lower() in ("none", "null"):
            return None
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expects {kind.__name__}{' or none' if optional else ''}, got {text!r}"
            ) from None

    parse.__name__ = kind.__name__
    return parse


def add_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    only: tuple[str, ...] | None = None,
    required: tuple[str, ...] = (),
    suppress_defaults: bool = True,
) -> None:
    """One typed flag per field of ``cls`` (or of the fields in ``only``), grouped, with
    the field's help and default. With ``suppress_defaults`` an unset flag is absent from
    the namespace, so :func:`build_config` knows what the command line set."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(cls):
        if only is not None and f.name not in only:
            continue
        group_name = f.metadata.get("group", "other")
        group = groups.get(group_name) or parser.add_argument_group(group_name)
        groups[group_name] = group
        flags = ["--" + f.name.replace("_", "-"), *f.metadata.get("aliases", ())]
        kind, optional = field_type(f.type)
        help_text = f"{f.metadata.get('help', '')} (default: {f.default})"
        options: dict[str, Any] = dict(
            dest=f.name,
            help=help_text,
            default=argparse.SUPPRESS if suppress_defaults else f.default,
        )
        if f.name in required:
            options.update(required=True, help=f.metadata.get("help", ""))
            del options["default"]
        if kind is bool:
            group.add_argument(*flags, action=argparse.BooleanOptionalAction, **options)
        else:
            parse = _parser(kind, optional or f.default is None)
            group.add_argument(*flags, type=parse, metavar=kind.__name__.upper(), **options)


def namespace_values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The values in ``args`` of ``cls``'s fields (those the parser defined)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}

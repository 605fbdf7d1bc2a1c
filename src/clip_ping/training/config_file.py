"""Reading a ``--config`` YAML file strictly: one flat mapping of settings to plain values.

A config is a list of settings, so anything else is refused with the file and the line,
in one line of text:

- anchors and aliases (``&a`` / ``*a``): an alias expands without bound (a 360-byte
  "billion laughs" file ran out of memory), and a flat list of settings never needs one;
- tags (``!!python/object``, ``!!binary``, ``!custom``), except the core scalar ones
  (``!!str``, ``!!int``, ``!!float``, ``!!bool``, ``!!null``);
- a list or a mapping as a value;
- the same setting twice (``lr`` and ``lr``, or ``batch-size`` and ``batch_size``);
- a file over :data:`MAX_CONFIG_BYTES`, and YAML syntax errors.

Dates stay strings (``name: 2024-06-01`` names a run). The values' types are checked
against the settings by :func:`clip_ping.training.config.load_yaml`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from ..errors import UserError

# A config of every setting with long paths is a few KB.
MAX_CONFIG_BYTES = 1 << 20
_CORE_SCALAR_TAGS = {
    f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null")
}


class _Refused(yaml.MarkedYAMLError):
    """A construct that is valid YAML but no config setting (see the module docstring)."""


class _StrictLoader(yaml.SafeLoader):
    def compose_node(self, parent, index):
        event = self.peek_event()
        mark = event.start_mark
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise _Refused(
                problem="anchors and aliases (&name, *name) are not allowed in a config; write "
                "each value out",
                problem_mark=mark,
            )
        tag = getattr(event, "tag", None)
        if tag not in (None, "!") and tag not in _CORE_SCALAR_TAGS:
            raise _Refused(
                problem=f"the tag {tag.replace('tag:yaml.org,2002:', '!!')} is not allowed; a "
                "setting's value is a plain number, string, true/false or null",
                problem_mark=mark,
            )
        if parent is not None and isinstance(
            event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)
        ):
            raise _Refused(
                problem="a setting's value is a single number, string, true/false or null, not "
                "a list or a mapping",
                problem_mark=mark,
            )
        return super().compose_node(parent, index)


_StrictLoader.add_constructor("tag:yaml.org,2002:timestamp", yaml.SafeLoader.construct_yaml_str)


def _decimal_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    """A plain decimal integer; YAML 1.1 reads ``010`` as 8, ``0x10`` as 16, ``1:30`` as 90."""
    if not re.fullmatch(r"[-+]?(0|[1-9][0-9]*)", node.value):
        raise _Refused(
            problem=f"{node.value!r} is not a plain decimal number (YAML reads a leading 0 as "
            "octal: 010 is 8); write it without the leading 0, or quote it for a string",
            problem_mark=node.start_mark,
        )
    return int(node.value)


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _decimal_int)


def _one_line(path: Path, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc)
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context:  # e.g. "while scanning a quoted scalar", started on an earlier line
        since = context_mark is not None and (mark is None or context_mark.line != mark.line)
        problem += f" ({context}{f', from line {context_mark.line + 1}' if since else ''})"
    return f"--config {path}{where}: {' '.join(problem.split())}"


def read_config_file(path: str | Path) -> dict[str, tuple[Any, int]]:
    """``{key: (value, line)}`` of the YAML mapping in ``path`` (values plain scalars, keys as
    written); a :class:`UserError` for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise UserError(
            f"--config {path} is {size:,} bytes; a config lists settings and stays under "
            f"{MAX_CONFIG_BYTES:,} bytes: is it the right file?"
        )
    data = path.read_bytes()[:MAX_CONFIG_BYTES]
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserError(f"--config {path}, line {line}: not UTF-8 text ({exc.reason})") from None
    loader = _StrictLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return {}
        if not isinstance(root, yaml.MappingNode):
            raise UserError(f"--config {path}: expected a mapping of settings to values")
        values: dict[str, tuple[Any, int]] = {}
        first_line: dict[str, tuple[str, int]] = {}  # by setting: batch-size is batch_size
        for key_node, value_node in root.value:
            key, line = str(key_node.value), key_node.start_mark.line + 1
            setting = key.replace("-", "_")
            if setting in first_line:
                raise _Refused(
                    problem=f"'{key}' repeats '{first_line[setting][0]}' of line "
                    f"{first_line[setting][1]}: keep one of them",
                    problem_mark=key_node.start_mark,
                )
            first_line[setting] = (key, line)
            values[key] = (loader.construct_object(value_node, deep=True), line)
    except yaml.YAMLError as exc:
        raise UserError(_one_line(path, exc)) from None
    finally:
        loader.dispose()
    return values

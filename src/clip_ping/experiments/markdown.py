"""Generated sections of hand-written pages.

A command that owns part of a page writes it between ``<!-- NAME -->`` and ``<!-- /NAME -->``
and leaves the rest alone: the sweeps fill docs/method.md's tables, the curve and the
per-architecture comparison fill their sections of docs/results.md, which ``make results``
rewrites around them.
"""

from __future__ import annotations

from pathlib import Path

from ..io import atomic_write_text


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name} -->", f"<!-- /{name} -->"


def section(text: str, name: str) -> str | None:
    """The block of ``name`` in ``text``, markers included (None when it has none)."""
    start, end = markers(name)
    if start not in text or end not in text.split(start, 1)[1]:
        return None
    body = text.split(start, 1)[1].split(end, 1)[0]
    return start + body + end


def has_section(path: Path, name: str) -> bool:
    """Whether the page at ``path`` exists and has the block of ``name``."""
    return path.is_file() and section(path.read_text(encoding="utf-8"), name) is not None


def replace_section(text: str, name: str, body: str) -> str:
    """``text`` with the block of ``name`` holding ``body``; appended when it has none."""
    start, end = markers(name)
    block = f"{start}\n{body.rstrip()}\n{end}"
    old = section(text, name)
    if old is None:
        return text.rstrip("\n") + "\n\n" + block + "\n"
    return text.replace(old, block, 1)


def write_section(path: str | Path, name: str, body: str) -> None:
    """Write ``body`` into the block of ``name`` of the page at ``path`` (created if missing)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    atomic_write_text(path, replace_section(text, name, body))


def carry_sections(new: str, old: str, names: tuple[str, ...], missing: dict[str, str]) -> str:
    """``new`` (a whole page about to replace ``old``) with ``old``'s blocks of ``names``
    appended, so that their own commands' output survives; ``missing[name]`` where ``old``
    has none."""
    for name in names:
        block = section(old, name)
        new = (
            replace_section(new, name, missing[name])
            if block is None
            else (new.rstrip("\n") + "\n\n" + block + "\n")
        )
    return new

"""Reading a CSV/TSV file of samples: the one place that parses the format.

Training pairs (:class:`~clip_ping.data.datasets.CsvDataset`, and through it bank builds and
tokenizer training) and evaluation sets read their files with :func:`read_csv_table`. A file
that does not parse cleanly fails here, naming the file and the line, instead of being read
silently wrong:

- a quote that is never closed (it would swallow every row after it into one caption),
  or text after a closing quote;
- a field over the ``csv`` module's limit of 131,072 characters (nearly always the same
  unclosed quote);
- a row with more fields than the header (an unquoted comma in a caption would otherwise
  cut it short silently); a row with fewer is read, its missing fields None (a bad sample
  to the readers);
- a header that names a column twice (one of the two would be read silently);
- with ``multiline=False`` (training pairs), a quoted field that runs over a line break: a
  stray quote pair that swallows the rows between it into one caption;
- bytes that are not UTF-8 (the line and the byte are named);
- a NUL byte;
- a separator that is not one character (``\\t``, two backslash-t characters as a shell
  passes ``'\\t'``, is read as the tab it stands for).

A UTF-8 byte-order mark, which Excel and pandas write, is accepted. Integer columns
(``label``) go through :func:`int_column`, which names the file, row, line and column of a
value that is not an integer.

Examples:
    >>> from pathlib import Path
    >>> from clip_ping.data.csv_table import read_csv_table
    >>> _ = Path("pairs.csv").write_text("filepath,title\\na.png,a cat\\nb.png,a dog\\n")
    >>> table = read_csv_table("pairs.csv", required={"filepath": "--csv-img-key"})
    >>> table.column("filepath"), list(table.lines)  # each row's line in the file
    (['a.png', 'b.png'], [2, 3])
"""

from __future__ import annotations

import csv
import os
from array import array
from dataclasses import dataclass
from pathlib import Path

ENCODING = "utf-8-sig"  # UTF-8, with or without a byte-order mark


@dataclass
class CsvTable:
    """The rows of a CSV file, column by column.

    ``rows[i][name]`` is the field of data row ``i`` (0-based, header excluded) under the
    header ``name``; None where the row has fewer fields than the header. ``lines[i]`` is the
    file line row ``i`` starts on (1-based, the header is line 1), for messages.
    """

    path: Path
    separator: str
    columns: list[str]
    rows: list[dict[str, str | None]]
    lines: array  # of int; compact: a CC3M-sized file has millions of rows

    def __len__(self) -> int:
        return len(self.rows)

    def column(self, name: str) -> list[str | None]:
        return [row.get(name) for row in self.rows]

    def where(self, row: int) -> str:
        """``"row 3 (line 5) of train.csv"``."""
        return f"row {row} (line {self.lines[row]}) of {self.path}"


def default_separator(path: str | os.PathLike) -> str:
    """Tab for ``.tsv`` files, else comma."""
    return "\t" if Path(path).suffix.lower() == ".tsv" else ","


def check_separator(separator: str) -> str:
    """``separator`` as the one character the reader splits on; ``ValueError`` naming the
    value and the fix. The two characters ``\\t`` (a shell's ``'\\t'``) mean a tab."""
    if separator == "\\t":
        return "\t"
    if isinstance(separator, str) and len(separator) == 1 and separator not in '"\r\n':
        return separator
    raise ValueError(
        f"--csv-separator {separator!r} is not a field separator: give one character other "
        "than a quote or a line break, such as ',' or ';' ('\\t' or $'\\t' for a tab)"
    )


def read_csv_table(
    path: str | os.PathLike,
    separator: str | None = None,
    required: dict[str, str] | None = None,
    multiline: bool = True,
) -> CsvTable:
    """Parse ``path`` strictly (see the module docstring).

    Args:
        path: a ``.csv``/``.tsv`` file with a header line.
        separator: field separator (default: :func:`default_separator`).
        required: ``{column: flag that names it}``; a missing column is a ``ValueError``
            naming the columns found, the separator and the flag.
        multiline: whether a quoted field may hold a line break.

    Raises:
        ValueError: the file is not clean CSV in UTF-8 (the message names the line), or a
            required column is missing.
    """
    path = Path(path)
    separator = check_separator(separator) if separator is not None else default_separator(path)
    try:
        with open(path, newline="", encoding=ENCODING) as file:
            return _parse(file, path, separator, required or {}, multiline)
    except UnicodeDecodeError:
        raise ValueError(_not_utf8(path)) from None


def _parse(file, path: Path, separator: str, required: dict[str, str], multiline: bool) -> CsvTable:
    # strict: an unclosed quote is an error at the end of the file, not one huge field.
    reader = csv.reader(file, delimiter=separator, strict=True)
    header: list[str] | None = None
    rows: list[dict[str, str | None]] = []
    lines = array("q")
    while True:
        start = reader.line_num + 1  # the line the next record starts on
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise ValueError(_parse_error(path, start, reader.line_num, exc)) from None
        if any("\0" in value for value in fields):
            raise ValueError(
                f"{path}, line {start}: a NUL byte; the file is not text (or is damaged)"
            )
        if not multiline and reader.line_num > start:
            raise ValueError(_spans_lines(path, start, reader.line_num))
        if header is None:
            header = _check_header(path, fields)
        elif len(fields) > len(header):
            raise ValueError(_too_many_fields(path, start, fields, header))
        elif fields:  # a blank line is no row (as csv.DictReader reads it)
            rows.append(dict(zip(header, fields, strict=False)))
            lines.append(start)
    if header is None:
        raise ValueError(f"{path} is empty: a CSV needs a header line naming its columns")
    for key, flag in required.items():
        if key not in header:
            raise ValueError(
                f"{path}: no column {key!r}; columns found (separator {separator!r}): "
                f"{header}. Name the right column with {flag}, or set --csv-separator if "
                "the columns look merged"
            )
    return CsvTable(path, separator, header, rows, lines)


def _parse_error(path: Path, start: int, line: int, exc: csv.Error) -> str:
    reason = str(exc)
    if "field larger than field limit" in reason:
        return (
            f"{path}: a field of the row starting at line {start} is longer than "
            f"{csv.field_size_limit():,} characters (it runs to line {line}); most likely a "
            'quote (") opened there is never closed. Close or remove the quote, or quote the '
            'field and double the quotes inside it ("")'
        )
    if "unexpected end of data" in reason:
        return (
            f'{path}: a quote (") opened in the row starting at line {start} is never closed, '
            f"so it would swallow every line after it (to line {line}, the end of the file). "
            'Close the quote, or double quotes inside a quoted field ("")'
        )
    if "expected after" in reason:
        return (
            f"{path}, line {line}: text after a closing quote ({reason}); a quoted field must "
            'end at its closing quote, and a quote inside it is written twice (""). Check the '
            f"row starting at line {start}"
        )
    if "NUL" in reason:
        return f"{path}, line {line}: a NUL byte; the file is not text (or is damaged)"
    return f"{path}, line {line} (row starting at line {start}): not valid CSV ({reason})"


def _check_header(path: Path, header: list[str]) -> list[str]:
    for place, name in enumerate(header):
        if name in header[:place]:
            raise ValueError(
                f"{path}: the header names column {name!r} twice (columns "
                f"{header.index(name) + 1} and {place + 1}), so one of them would be read "
                "silently; rename or remove one"
            )
    return header


def _spans_lines(path: Path, start: int, end: int) -> str:
    return (
        f"{path}, lines {start}-{end}: a quoted field runs over a line break, so the lines "
        "between are read as one caption (most likely a stray pair of quotes); a training row "
        "is one line: remove the quotes, or close each quoted field on its own line"
    )


def _too_many_fields(path: Path, line: int, fields: list[str], header: list[str]) -> str:
    # pandas refuses these too; read as the header says, the fields past it would be lost
    # (a caption cut at its first unquoted comma).
    return (
        f"{path}, line {line}: {len(fields)} fields but the header has {len(header)} "
        f"({', '.join(header)}); a separator inside a field (a comma in a caption) needs the "
        'field quoted: "a red, round shape"'
    )


def _not_utf8(path: Path) -> str:
    """Where the first byte that is not UTF-8 is (found again line by line: cheap, and only
    on this error path)."""
    with open(path, "rb") as file:
        for number, line in enumerate(file, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                byte = line[exc.start : exc.start + 1].hex()
                return (
                    f"{path}, line {number}: byte 0x{byte} at column {exc.start + 1} is not "
                    "UTF-8 text; save the file as UTF-8 (Excel: 'CSV UTF-8'; or iconv -f "
                    f"cp1252 -t utf-8 {path.name})"
                )
    return f"{path} is not UTF-8 text; save it as UTF-8"


def int_column(table: CsvTable, name: str) -> list[int]:
    """Column ``name`` as integers; ``ValueError`` naming the file, row, line and column of
    the first value that is not one."""
    values = []
    for row, value in enumerate(table.column(name)):
        try:
            values.append(int(value))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            shown = (
                "nothing (the row has fewer fields than the header)"
                if value is None
                else (repr(value if len(value) <= 40 else value[:40] + "..."))
            )
            raise ValueError(
                f"{table.where(row)}: column {name!r} holds {shown}, not an integer; "
                f"{name} must be a whole number (a class index) in every row"
            ) from None
    return values

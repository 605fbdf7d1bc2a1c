"""CSV files that are not clean fail loudly, naming the file and the line, wherever a CSV is
read: training pairs, bank builds and tokenizer training (CsvDataset) and evaluation sets."""

import csv

import pytest
from PIL import Image

from clip_ping.cli import main
from clip_ping.data.csv_table import read_csv_table
from clip_ping.data.datasets import CsvDataset
from clip_ping.evaluation.datasets import load_eval_dataset


def raw(image):
    return image


def _pairs(folder, rows=151, label=False):
    """``rows`` lines of ``images/i.png,caption i[,label]`` (one real image, shared)."""
    (folder / "images").mkdir(exist_ok=True)
    Image.new("RGB", (8, 8), (255, 0, 0)).save(folder / "images" / "0.png")
    header = "filepath,title" + (",label" if label else "")
    lines = [f"images/0.png,a red circle number {i}" + (",0" if label else "") for i in range(rows)]
    return header, lines


def _write(path, header, lines, encoding="utf-8"):
    path.write_text("\n".join([header, *lines]) + "\n", encoding=encoding)
    return path


def _readers(path):
    """Every reader of a CSV in the project, each a callable of the file."""
    return {
        "training pairs": lambda: CsvDataset(path),
        "evaluation set": lambda: load_eval_dataset(path, raw),
    }


def test_an_unclosed_quote_fails_naming_file_and_line_instead_of_eating_rows(tmp_path, capsys):
    header, lines = _pairs(tmp_path)
    lines[51] = 'images/0.png,"a red circle'  # row 51 is line 53 (the header is line 1)
    path = _write(tmp_path / "train.csv", header, lines)
    for name, read in _readers(path).items():
        with pytest.raises(ValueError, match=r"train\.csv: a quote .* line 53 is never closed"):
            read()
        print(name, "refused")
    # The same through a command: a one-line error and a non-zero exit, not 51 samples.
    assert (
        main(["tokenizer", "train", "--train-data", str(path), "--out", str(tmp_path / "t")]) == 2
    )
    assert "line 53 is never closed" in capsys.readouterr().err
    # A quote closed on a later line with text after it: also refused, with the line.
    lines[51], lines[60] = 'images/0.png,"a red circle', 'images/0.png,a "blue" square'
    _write(path, header, lines)
    with pytest.raises(ValueError, match="line 62: text after a closing quote.*line 53"):
        CsvDataset(path)


def test_a_field_over_the_csv_limit_is_a_clear_error_not_a_csv_traceback(tmp_path):
    header, lines = _pairs(tmp_path, rows=5)
    limit = csv.field_size_limit()
    lines[2] = f'images/0.png,"{"x" * (limit + 10)}"'
    path = _write(tmp_path / "long.csv", header, lines)
    for read in _readers(path).values():
        with pytest.raises(ValueError, match=rf"long\.csv: .* line 4 is longer than {limit:,}"):
            read()


def test_bytes_that_are_not_utf8_name_the_line(tmp_path):
    header, lines = _pairs(tmp_path, rows=10)
    path = tmp_path / "latin.csv"
    text = "\n".join([header, *lines[:6], "images/0.png,un caf\u00e9 rouge", *lines[7:]]) + "\n"
    path.write_bytes(text.encode("cp1252"))  # Excel's "CSV" on Windows
    for read in _readers(path).values():
        with pytest.raises(ValueError, match=r"latin\.csv, line 8: byte 0xe9 .* not UTF-8"):
            read()


def test_a_label_that_is_not_an_integer_names_file_row_line_and_column(tmp_path):
    header, lines = _pairs(tmp_path, rows=10, label=True)
    lines[4] = "images/0.png,a red circle,cat"
    path = _write(tmp_path / "labels.csv", header, lines)
    expected = r"row 4 \(line 6\) of .*labels\.csv: column 'label' holds 'cat', not an integer"
    readers = {**_readers(path), "training pairs": lambda: CsvDataset(path).labels}
    for read in readers.values():
        with pytest.raises(ValueError, match=expected):
            read()


def test_training_pairs_are_not_refused_over_a_label_they_never_read(tmp_path):
    header, lines = _pairs(tmp_path, rows=10, label=True)
    lines[4] = "images/0.png,a red circle,"  # one missing label
    dataset = CsvDataset(_write(tmp_path / "labels.csv", header, lines), on_bad_sample="error")
    assert len(dataset) == 10 and dataset[4]["caption"] == "a red circle"
    with pytest.raises(ValueError, match=r"row 4 \(line 6\) .* holds '', not an integer"):
        dataset.labels  # noqa: B018 (read where labels are used: evaluation, shard export)


def test_a_row_with_more_fields_than_the_header_is_refused(tmp_path):
    header, lines = _pairs(tmp_path, rows=10)
    lines[6] = "images/0.png,a red, round shape"  # the caption was cut to "a red"
    path = _write(tmp_path / "commas.csv", header, lines)
    for read in _readers(path).values():
        with pytest.raises(ValueError, match=r"commas\.csv, line 8: 3 fields but the header has 2"):
            read()


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    header, lines = _pairs(tmp_path, rows=3, label=True)
    path = _write(tmp_path / "excel.csv", header, lines, encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    dataset = CsvDataset(path)
    assert dataset.keys() == ["images/0.png"] * 3 and dataset.labels == [0, 0, 0]
    assert dataset[0]["caption"] == "a red circle number 0"
    evaluation = load_eval_dataset(path, raw)
    assert evaluation.captions[2] == "a red circle number 2" and evaluation.labels == [0]


def test_clean_quoting_still_reads(tmp_path):
    path = tmp_path / "quoted.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(
            [["filepath", "title"], ["a.png", 'a "quoted", comma'], ["b.png", "two\nlines"]]
        )
    with open(path, "a") as f:
        f.write("\n")  # a blank line is no row
    table = read_csv_table(path)
    assert table.column("title") == ['a "quoted", comma', "two\nlines"]
    assert list(table.lines) == [2, 3] and table.where(1) == f"row 1 (line 3) of {path}"


def test_a_stray_quote_pair_in_training_pairs_is_refused_naming_the_lines(tmp_path, capsys):
    header, lines = _pairs(tmp_path, rows=30, label=True)
    lines[10] = 'images/0.png,"a red circle,0'  # opened here ...
    lines[20] = 'images/0.png,a red circle",0'  # ... closed ten rows later: one caption
    path = _write(tmp_path / "q.csv", header, lines)
    with pytest.raises(ValueError, match=r"q\.csv, lines 12-22: a quoted field runs over a line"):
        CsvDataset(path, on_bad_sample="error")
    assert main(["tokenizer", "train", "--train-data", str(path), "--out", str(tmp_path / "t")])
    assert "lines 12-22" in capsys.readouterr().err
    # An evaluation set may still hold a caption with a line break (test_clean_quoting_...).
    assert len(read_csv_table(path)) == 20


def test_a_column_named_twice_is_refused(tmp_path):
    header, lines = _pairs(tmp_path, rows=5)
    path = _write(tmp_path / "twice.csv", "filepath,title,title", [f"{x},other" for x in lines])
    for read in _readers(path).values():
        with pytest.raises(ValueError, match=r"twice\.csv: .* column 'title' twice \(columns 2"):
            read()


def test_a_nul_byte_in_a_caption_is_refused(tmp_path):
    header, lines = _pairs(tmp_path, rows=5)
    lines[3] = "images/0.png,a red\0circle"
    path = _write(tmp_path / "nul.csv", header, lines)
    for read in _readers(path).values():
        with pytest.raises(ValueError, match=r"nul\.csv, line 5: a NUL byte"):
            read()


@pytest.mark.parametrize("separator", ["", ";;", '"', "\n", "\\x"])
def test_a_separator_that_is_not_one_character_is_named(tmp_path, separator, capsys):
    header, lines = _pairs(tmp_path, rows=5)
    path = _write(tmp_path / "pairs.csv", header, lines)
    with pytest.raises(ValueError, match=r"--csv-separator .* is not a field separator"):
        CsvDataset(path, separator=separator)
    argv = ["tokenizer", "train", "--train-data", str(path), "--out", str(tmp_path / "t")]
    assert main([*argv, "--csv-separator", separator]) == 2
    assert f"--csv-separator {separator!r} is not" in capsys.readouterr().err


def test_a_typed_backslash_t_separator_is_a_tab(tmp_path):
    header, lines = _pairs(tmp_path, rows=5)
    path = _write(
        tmp_path / "pairs.tsv", header.replace(",", "\t"), [x.replace(",", "\t") for x in lines]
    )
    dataset = CsvDataset(path, separator="\\t")  # what a shell passes for '\t'
    assert dataset.captions[4] == "a red circle number 4"

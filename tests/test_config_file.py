"""``--config`` files are read strictly: every refusal is one line naming the file and line."""

import pytest

from clip_ping.training.config import build_config
from clip_ping.training.config_file import MAX_CONFIG_BYTES, read_config_file


def _refusal(tmp_path, text: str | bytes) -> str:
    path = tmp_path / "run.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError) as info:
        build_config(str(path))
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_an_anchor_bomb_in_a_known_key_is_refused_unexpanded(tmp_path):
    # "Billion laughs": each list holds 9 aliases of the one before, 9**6 strings in all from
    # a 300-byte file. Before: all built, then all printed in the wrong-type error.
    levels = ["&l0 [" + ", ".join(["lol"] * 9) + "]"] + [
        f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 7)
    ]
    message = _refusal(tmp_path, f"train_data: t.csv\nname: [{', '.join(levels)}]\n")
    assert "line 2, column 7: a setting's value is a single number" in message
    assert len(message) < 300


def test_an_alias_of_a_plain_value_is_refused_too(tmp_path):
    message = _refusal(tmp_path, "train_data: t.csv\nlr: &rate 0.01\nwd: *rate\n")
    assert "line 2, column 5: anchors and aliases" in message


def test_a_wrong_type_error_quotes_a_long_value_cut_short(tmp_path):
    message = _refusal(tmp_path, f"train_data: t.csv\nbatch_size: {'9x' * 200_000}\n")
    assert "line 2: config key 'batch_size' expects int, got '9x9x" in message
    assert len(message) < 300


def test_python_and_other_tags_are_refused_with_the_line(tmp_path):
    message = _refusal(
        tmp_path, 'train_data: t.csv\n\nname: !!python/object/apply:os.system ["echo pwned"]\n'
    )
    assert "line 3, column 7: the tag !!python/object/apply:os.system is not allowed" in message
    assert "line 2" in _refusal(tmp_path, "train_data: t.csv\nname: !!binary aGVsbG8=\n")
    path = tmp_path / "core.yaml"
    path.write_text("train_data: !!str 12\n")  # the core scalar tags stay allowed
    assert build_config(str(path)).train_data == "12"


@pytest.mark.parametrize(
    "text,where,what",
    [
        (
            'train_data: t.csv\nname: "unclosed\nlr: 0.1\n',
            "line 4, column 1",
            "found unexpected end of stream (while scanning a quoted scalar, from line 2)",
        ),
        (
            "train_data: t.csv\nname: a: b\n",
            "line 2, column 8",
            "mapping values are not allowed here",
        ),
        (
            "train_data: t.csv\n\tlr: 0.1\n",
            "line 2, column 1",
            "found character '\\t' that cannot start any token",
        ),
        (
            "train_data: t.csv\nlr: 0.1\n---\nlr: 0.2\n",
            "line 3, column 1",
            "but found another document (expected a single document in the stream, from line 1)",
        ),
    ],
)
def test_yaml_syntax_errors_are_one_line_with_the_line_number(tmp_path, text, where, what):
    assert f"{where}: {what}" in _refusal(tmp_path, text)


def test_a_setting_given_twice_is_refused_naming_both_lines(tmp_path):
    message = _refusal(tmp_path, "train_data: t.csv\nlr: 0.1\nwd: 0.2\nlr: 0.3\n")
    assert "line 4, column 1: 'lr' repeats 'lr' of line 2: keep one of them" in message
    message = _refusal(tmp_path, "batch-size: 8\ntrain_data: t.csv\nbatch_size: 16\n")
    assert "line 3, column 1: 'batch_size' repeats 'batch-size' of line 1" in message


def test_lists_mappings_and_non_mapping_files_are_refused(tmp_path):
    assert "line 2, column 5: a setting's value is a single number" in _refusal(
        tmp_path, "train_data: t.csv\nlr: {peak: 0.1}\n"
    )
    assert "line 1, column 13: a setting's value" in _refusal(tmp_path, "train_data: [a, b]\n")
    assert "expected a mapping of settings" in _refusal(tmp_path, "- train_data\n")


def test_oversized_and_non_utf8_files_are_refused(tmp_path):
    big = "train_data: t.csv\n" + "# padding\n" * (MAX_CONFIG_BYTES // 10)
    assert f"stays under {MAX_CONFIG_BYTES:,} bytes" in _refusal(tmp_path, big)
    message = _refusal(tmp_path, b"train_data: t.csv\nname: caf\xe9\n")
    assert "line 2: not UTF-8 text" in message


def test_plain_configs_still_read_with_lines_dates_as_strings_and_a_bom(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("\ufefftrain-data: t.csv\n# a comment\nname: 2024-06-01\nlr: 1e-3\n")
    assert read_config_file(path) == {
        "train-data": ("t.csv", 1),
        "name": ("2024-06-01", 3),
        "lr": ("1e-3", 4),
    }
    cfg = build_config(str(path))
    assert cfg.name == "2024-06-01" and cfg.lr == 1e-3
    path.write_text("")
    assert read_config_file(path) == {}


@pytest.mark.parametrize("value", ["010", "0x10", "1:30", "-0b10", "1_000"])
def test_an_integer_yaml_reads_otherwise_than_decimal_is_refused(tmp_path, value):
    message = _refusal(tmp_path, f"train-data: x.csv\nbatch-size: {value}\n")
    assert f"line 2, column 13: {value!r} is not a plain decimal number" in message
    path = tmp_path / "ok.yaml"
    path.write_text("batch-size: 10\nseed: -3\nlr: 0.01\n")
    assert {k: v for k, (v, _) in read_config_file(path).items()} == {
        "batch-size": 10,
        "seed": -3,
        "lr": 0.01,
    }

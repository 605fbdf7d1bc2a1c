"""The bank folder format: the teacher recorded in meta, random-access arrays, neighbour tables."""

import json
import mmap
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from clip_ping.bank import (
    FEATURES,
    META,
    NEIGHBORS,
    NEIGHBORS_META,
    SIMILARITIES,
    Bank,
    TeacherSpec,
    has_neighbor_table,
    open_array,
    write_neighbor_table,
)
from clip_ping.teachers import create_teacher


def vm_flags(array: np.ndarray) -> set[str]:
    """The kernel's flags for the mapping that holds ``array``'s first byte
    (``/proc/self/smaps``; ``rr``: read at random, set by ``madvise(MADV_RANDOM)``)."""
    address = array.__array_interface__["data"][0]
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:  # "start-end perms offset dev inode path"
            start, end = (int(x, 16) for x in head.split("-"))
            inside = start <= address < end
        elif inside and head == "VmFlags:":
            return set(line.split()[1:])
    raise AssertionError(f"no mapping holds address {address:#x}")


def bank_copy(source: Path, target: Path) -> Path:
    """A bank folder with ``source``'s features and meta, without a neighbour table."""
    target.mkdir()
    for name in (FEATURES, META):
        shutil.copy(source / name, target / name)
    return target


@pytest.mark.parametrize(("modality", "image_size"), [("image", 64), ("text", None)])
def test_teacher_spec_is_what_the_teacher_recorded(shapes_banks, modality, image_size):
    bank = Bank(shapes_banks / modality)
    spec = bank.teacher_spec
    teacher = create_teacher(None, modality, image_size)  # what shapes_banks was built with
    assert (spec.name, spec.modality, spec.dim) == (teacher.name, modality, teacher.dim)
    assert spec.preprocessing == teacher.info == bank.meta["preprocessing"]
    assert spec == TeacherSpec.from_meta(json.loads((bank.path / META).read_text()))
    assert spec.image_size == image_size and spec.online_image_size == image_size
    assert spec.extra == {}
    if modality == "text":
        assert spec.max_tokens == teacher.info["max_tokens"] > 0 and spec.pooling == "mean"
    else:
        assert spec.weights == teacher.info["weights"] and spec.max_tokens is None


def test_teacher_spec_of_other_teachers_and_unknown_fields(shapes_banks):
    meta = Bank(shapes_banks / "image").meta
    hf = dict(meta, teacher="hf:some/vit", preprocessing={"image_processor": {"size": 224}})
    assert TeacherSpec.from_meta(hf).image_processor == {"size": 224}
    assert TeacherSpec.from_meta(hf).online_image_size is None  # resizes with its processor
    npy = dict(meta, teacher="npy:f.npy", preprocessing={"source": "f.npy", "dtype": "float32"})
    spec = TeacherSpec.from_meta(npy)  # no model to run:
    assert (spec.source, spec.dtype, spec.online_image_size) == ("f.npy", "float32", None)
    newer = dict(meta, preprocessing={**meta["preprocessing"], "crop": "random"})
    spec = TeacherSpec.from_meta(newer)
    assert spec.extra == {"crop": "random"} and spec.preprocessing == newer["preprocessing"]
    older = {k: v for k, v in meta.items() if k != "preprocessing"}
    assert TeacherSpec.from_meta(older).image_size is None
    assert TeacherSpec.from_meta(older).preprocessing == {}


def test_random_access_arrays_equal_np_load(shapes_banks, tmp_path):
    bank = Bank(shapes_banks / "text")
    features = bank.random_access_features()
    np.testing.assert_array_equal(features, np.load(bank.path / FEATURES))
    assert features.dtype == np.float16 and not features.flags.writeable
    assert isinstance(features.base, mmap.mmap)
    assert "rr" in vm_flags(features) and "rr" not in vm_flags(bank.features)
    tables = (bank.neighbors(), bank.neighbors(random_access=True), (NEIGHBORS, SIMILARITIES))
    for table, random, name in zip(*tables, strict=True):
        np.testing.assert_array_equal(random, np.load(bank.path / name))
        assert random.dtype == table.dtype and "rr" in vm_flags(random)

    # Other header versions and memory orders than np.save's default.
    fortran = np.asfortranarray(np.arange(24, dtype=np.int32).reshape(4, 6))
    with open(tmp_path / "v2.npy", "wb") as file:
        np.lib.format.write_array(file, fortran, version=(2, 0))
    opened = open_array(tmp_path / "v2.npy", random_access=True)
    np.testing.assert_array_equal(opened, fortran)
    assert opened.flags.f_contiguous


def test_truncated_table_fails_with_a_clear_error(shapes_banks, tmp_path):
    folder = shutil.copytree(shapes_banks / "image", tmp_path / "image")
    os.truncate(folder / NEIGHBORS, (folder / NEIGHBORS).stat().st_size - 8)
    with pytest.raises(ValueError, match="neighbors.npy is unreadable or truncated"):
        Bank(folder).neighbors(random_access=True)
    with pytest.raises(ValueError, match="truncated"):
        Bank(folder).neighbors()


def test_neighbor_table_round_trip(shapes_banks, tmp_path):
    original = Bank(shapes_banks / "text")
    bank = Bank(bank_copy(original.path, tmp_path / "text"))
    assert not bank.has_neighbors and not has_neighbor_table(bank.path)
    with pytest.raises(FileNotFoundError, match="has no neighbour table"):
        bank.neighbors()

    rng = np.random.default_rng(0)
    neighbors = rng.integers(0, len(bank), size=(len(bank), 3))  # int64: stored as int32
    similarities = rng.random((len(bank), 3))  # float64: stored as float16
    write_neighbor_table(bank, neighbors, similarities, backend="test", recall={"recall@1": 1})
    found, sims = Bank(bank.path).neighbors()
    assert found.dtype == np.int32 and sims.dtype == np.float16
    np.testing.assert_array_equal(found, neighbors)
    np.testing.assert_array_equal(sims, similarities.astype(np.float16))
    info = {"k": 3, "backend": "test", "recall": {"recall@1": 1}, "bank": bank.fingerprint}
    assert bank.neighbor_info() == info and has_neighbor_table(bank.path)
    assert sorted(p.name for p in bank.path.iterdir()) == sorted(
        [FEATURES, META, NEIGHBORS, SIMILARITIES, NEIGHBORS_META]
    )  # no temporary files left behind

    # Rewriting the mined table gives the very same bytes as mine_bank wrote.
    details = {k: v for k, v in original.neighbor_info().items() if k not in ("k", "bank")}
    write_neighbor_table(bank, *original.neighbors(), **details)
    for name in (NEIGHBORS, SIMILARITIES, NEIGHBORS_META):
        assert (bank.path / name).read_bytes() == (original.path / name).read_bytes(), name

    with pytest.raises(ValueError, match=r"two \(N, K\) arrays with N = 512"):
        write_neighbor_table(bank, neighbors[:-1], similarities[:-1])


def test_damaged_meta_files_name_the_file_and_the_fix(shapes_banks, tmp_path):
    folder = shutil.copytree(shapes_banks / "text", tmp_path / "text")
    meta = (folder / META).read_text()
    (folder / META).write_text(meta[: len(meta) // 2])  # cut mid-write by hand
    with pytest.raises(ValueError, match=rf"{folder / META} is not valid JSON .* bank build"):
        Bank(folder)
    entries = json.loads(meta)
    del entries["num_rows"]
    (folder / META).write_text(json.dumps(entries))
    with pytest.raises(ValueError, match=r"meta.json has no 'num_rows' entry.*delete .* rerun"):
        Bank(folder)
    (folder / META).write_text(meta)
    (folder / NEIGHBORS_META).write_text("{")
    with pytest.raises(ValueError, match=r"neighbors.json is not valid JSON.*bank neighbors"):
        Bank(folder).neighbors()


def test_bad_neighbour_tables_are_refused_naming_file_and_command(shapes_banks, tmp_path):
    folder = shutil.copytree(shapes_banks / "image", tmp_path / "image")
    table = np.load(folder / NEIGHBORS)
    for bad, value in (((7, 2), len(table)), ((9, 0), -3)):  # past the end; negative
        damaged = table.copy()
        damaged[bad] = value
        np.save(folder / NEIGHBORS, damaged)
        for random_access in (False, True):  # training reads it with random access
            with pytest.raises(ValueError, match=rf"holds index {value} at row {bad[0]}.*--k 5"):
                Bank(folder).neighbors(random_access=random_access)
    (folder / NEIGHBORS).unlink()
    command = f"clip-ping bank neighbors {folder} --k 5"
    with pytest.raises(FileNotFoundError, match=rf"{folder / NEIGHBORS} is missing.*{command}"):
        Bank(folder).neighbors()

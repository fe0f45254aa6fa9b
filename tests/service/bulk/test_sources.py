"""Listing and reading bulk-build sources: the local build's order, names and metadata, through fsspec."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import fsspec
import fsspec.implementations.local
import pytest

from model.data import iter_records
from service.bulk import sources
from service.bulk.sources import iter_source, list_source, read_entries
from service.cli.index import _items

CIFAR = Path(__file__).parents[2] / "fixtures" / "cifar10"


def _tar(path: Path, files: list[tuple[str, bytes]], mode: str) -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def files() -> list[tuple[str, bytes]]:
    """A few fixture images under names out of order, one of them in a sub-folder."""
    picked = sorted(CIFAR.glob("*/*.jpg"))[::30]
    return [(f"{'a' if i % 2 else 'a-z/x'}/{i:02d}.jpg", f.read_bytes()) for i, f in enumerate(reversed(picked))]


def test_a_folder_is_listed_and_read_as_the_local_build_reads_it():
    entries = list_source(str(CIFAR))
    local = list(_items(CIFAR))
    assert [e.name for e in entries] == [item.name for item in local]
    assert [e.metadata for e in entries] == [item.metadata for item in local]
    assert read_entries(entries[:7]) == [item.data for item in local[:7]]


def test_a_folder_sorts_path_by_path_as_the_local_build_does(tmp_path, files):
    for name, data in files:
        (tmp_path / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / name).write_bytes(data)
    (tmp_path / "src" / "notes.txt").write_text("not an image")
    names = [e.name for e in list_source(str(tmp_path / "src"))]
    assert names == [rec.name for rec in iter_records(tmp_path / "src")]
    assert names[0].startswith("a/")  # part by part 'a' < 'a-z'; as strings 'a-z/…' < 'a/…'


def test_a_folder_is_walked_one_folder_at_a_time_with_files_and_folders_interleaved(tmp_path, files, monkeypatch):
    data = files[0][1]
    for name in ("m.jpg", "b/z.jpg", "b/a/1.jpg", "a.jpg", "c/d/e/2.jpg", "b0.jpg", "b.jpg.d/3.jpg"):
        (tmp_path / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / name).write_bytes(data)
    listed: list[str] = []
    ls = fsspec.implementations.local.LocalFileSystem.ls
    monkeypatch.setattr(
        fsspec.implementations.local.LocalFileSystem, "ls", lambda fs, p, **kw: listed.append(p) or ls(fs, p, **kw)
    )
    listing = sources.iter_source(str(tmp_path / "src"))
    assert next(listing).name == "a.jpg"
    assert len(listed) == 1  # only the top folder so far: b/, c/, c/d/ … are listed when reached
    names = ["a.jpg", *(e.name for e in listing)]
    assert names == [rec.name for rec in iter_records(tmp_path / "src")]
    assert names == ["a.jpg", "b/a/1.jpg", "b/z.jpg", "b.jpg.d/3.jpg", "b0.jpg", "c/d/e/2.jpg", "m.jpg"]
    assert len(listed) == 7  # each folder once


@pytest.mark.parametrize("suffix, mode", [(".tar", "w"), (".tar.gz", "w:gz")])
def test_an_archive_is_listed_in_name_order_and_its_members_read(tmp_path, files, suffix, mode):
    archive = _tar(tmp_path / f"photos{suffix}", files, mode)
    entries = list_source(str(archive))
    local = list(_items(archive))
    assert [(e.name, e.metadata) for e in entries] == [(i.name, i.metadata) for i in local]
    assert read_entries(entries) == [i.data for i in local]
    assert all(e.sequential == (suffix != ".tar") for e in entries)


def test_a_glob_lists_each_matching_archive_in_turn(tmp_path, files):
    _tar(tmp_path / "part-1.tar", files[:3], "w")
    _tar(tmp_path / "part-0.tar", files[3:], "w")
    entries = list_source(str(tmp_path / "part-*.tar"))
    assert [e.metadata["collection"] for e in entries] == ["part-0.tar"] * (len(files) - 3) + ["part-1.tar"] * 3
    assert sorted(read_entries(entries)) == sorted(data for _, data in files)
    with pytest.raises(FileNotFoundError, match="nothing matches"):
        list_source(str(tmp_path / "none-*.tar"))


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_path_list_keeps_its_order_and_makes_its_other_columns_metadata(tmp_path, files, fmt):
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    (tmp_path / "imgs").mkdir()
    for i, (_, data) in enumerate(files[:3]):
        (tmp_path / "imgs" / f"{i}.jpg").write_bytes(data)
    table = pa.table({"path": ["imgs/2.jpg", str(tmp_path / "imgs" / "0.jpg"), "imgs/1.jpg"], "label": [7, 8, 9]})
    listing = tmp_path / f"list.{fmt}"
    pq.write_table(table, listing) if fmt == "parquet" else pcsv.write_csv(table, listing)
    entries = list_source(str(listing))
    assert [e.metadata["label"] for e in entries] == [7, 8, 9]
    assert entries[0].metadata | {"label": 0} == {"path": "imgs/2.jpg", "collection": listing.name, "label": 0}
    assert read_entries(entries) == [files[2][1], files[0][1], files[1][1]]


def test_a_list_without_a_path_or_url_column_is_refused(tmp_path):
    (tmp_path / "list.csv").write_text("file,label\na.jpg,1\n")
    with pytest.raises(ValueError, match="column named 'path' or 'url'"):
        list_source(str(tmp_path / "list.csv"))
    (tmp_path / "list.csv").write_text("url,size\na.jpg,1\n")
    with pytest.raises(ValueError, match="reserved"):
        list_source(str(tmp_path / "list.csv"))


def test_a_path_list_streams_in_batches_and_names_its_first_bad_row(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setattr(sources, "LIST_BATCH", 2)
    paths = [f"{i}.jpg" for i in range(5)] + [""] + ["6.jpg"]
    pq.write_table(pa.table({"path": paths, "n": list(range(7))}), tmp_path / "list.parquet", row_group_size=3)
    listing = iter_source(str(tmp_path / "list.parquet"))
    got = [next(listing) for _ in range(5)]  # read before the bad row is reached
    assert [(e.name, e.metadata["n"]) for e in got] == [(f"{i}.jpg", i) for i in range(5)]
    with pytest.raises(ValueError, match="row 5 has no path"):
        next(listing)


def test_urls_are_listed_and_read_through_fsspec(files):
    fs = fsspec.filesystem("memory")
    for name, data in files:
        fs.pipe(f"/bulk-src/photos/{name}", data)
    entries = list_source("memory://bulk-src/photos")
    assert all(e.url.startswith("memory://") for e in entries)
    assert entries[0].metadata == {"path": entries[0].name, "collection": "photos"}
    assert sorted(read_entries(entries)) == sorted(data for _, data in files)
    fs.rm("/bulk-src", recursive=True)


def test_an_image_that_cannot_be_read_fails_alone(tmp_path, files):
    for name, data in files[:2]:
        (tmp_path / Path(name).name).write_bytes(data)
    entries = list_source(str(tmp_path))
    (tmp_path / entries[0].name).unlink()
    got = read_entries(entries)
    assert isinstance(got[0], FileNotFoundError) and got[1] == (tmp_path / entries[1].name).read_bytes()


def test_a_missing_source_is_named_before_anything_is_listed(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        iter_source(str(tmp_path / "nope"))  # not on the first next(): the CLI checks before it creates anything

"""The decode and sketch stages: the local build's records, errors and sketches, row by row."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from index import IndexMismatchError
from model.data import ImageDecodeError
from model.loading import load_embedder
from service.bulk.sources import list_source
from service.bulk.stages import DecodeChunk, Sketcher, chunk_row
from service.cli.index import _items
from service.ingest import FileDecoder, index_record
from service.model_index import BuildOptions, ModelIndex

CIFAR = Path(__file__).parents[2] / "fixtures" / "cifar10"


def _no_address(message: str) -> str:
    """PIL's message names the in-memory file object it read, by address."""
    return re.sub(r"0x[0-9a-f]+", "0x…", message)


@pytest.fixture
def folder(tmp_path) -> Path:
    for f in sorted(CIFAR.glob("*/*.jpg"))[::50]:
        (tmp_path / "src" / f.parent.name).mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / f.parent.name / f.name).write_bytes(f.read_bytes())
    (tmp_path / "src" / "broken.jpg").write_bytes(b"nope")
    return tmp_path / "src"


def test_decoded_rows_carry_the_local_builds_records_pixels_and_errors(folder):
    rows = DecodeChunk(32)(chunk_row(3, 30, list_source(str(folder))))
    local = list(_items(folder))
    assert [r["pos"] for r in rows] == list(range(30, 30 + len(local))) and {r["shard"] for r in rows} == {3}
    for row, item in zip(rows, local):
        record = {**{k: row[k] for k in ("name", "sha256", "size")}, "metadata": json.loads(row["metadata"])}
        assert record == index_record(item)
        if item.data == b"nope":
            with pytest.raises(ImageDecodeError) as e:
                FileDecoder(32)(item.data, item.source)
            assert _no_address(row["error"]) == _no_address(str(e.value)) and not row["image"].any()
        else:
            assert row["error"] == "" and np.array_equal(row["image"], FileDecoder(32)(item.data, item.source))


def test_the_sketcher_gives_the_index_sketch_and_zeros_for_unreadable_rows(folder, tiny_model_dir, tmp_path):
    rows = DecodeChunk(32)(chunk_row(0, 0, list_source(str(folder))))
    batch = {k: np.stack([r[k] for r in rows]) if k == "image" else np.array([r[k] for r in rows]) for k in rows[0]}
    with ModelIndex.create(tmp_path / "idx", load_embedder(tiny_model_dir, device="cpu"), BuildOptions(dim=64)) as mi:
        out = Sketcher(str(tiny_model_dir), mi.index.pins, batch_size=4)(batch)
        ok = batch["error"] == ""
        assert "image" not in out and out["vector"].shape == (len(rows), 64)
        want = mi.sketch(batch["image"][ok])  # float noise only: other batch sizes, other kernels
        assert np.allclose(out["vector"][ok], want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))
        assert not out["vector"][~ok].any() and (~ok).sum() == 1


def test_the_sketcher_refuses_a_model_the_index_was_not_built_with(tiny_model_dir, tmp_path, extractor):
    with ModelIndex.create(tmp_path / "idx", extractor, BuildOptions(dim=64)) as mi:
        with pytest.raises(IndexMismatchError, match="this index was built with other"):
            Sketcher(str(tiny_model_dir), mi.index.pins, batch_size=4)

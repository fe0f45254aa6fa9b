"""AFVIndex: persistence, add/delete/re-add, duplicates, filters, pins, corruption, read-only."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from index import (
    AFVIndex,
    IndexCorruptError,
    IndexExistsError,
    IndexLockedError,
    IndexMismatchError,
    IndexNotFoundError,
    IndexReadOnlyError,
    InvalidInputError,
)
from model.extract import AFVExtractor
from model.fisher import FisherStats


def _items(images, n):
    return [(data, {"path": name, "label": name.split("/")[0]}) for name, data in images[:n]]


@pytest.fixture
def built(tmp_path, extractor, images):
    idx = AFVIndex.create(tmp_path / "idx", extractor, dim=128, mode="fast")
    results = idx.add_images(_items(images, 20))
    yield idx, results
    idx.close()


def test_round_trip_persistence(tmp_path, extractor, images, built):
    idx, results = built
    q = idx.embed(_batch(extractor, images[:3]))
    before = idx.search(q, k=5)
    idx.close()
    with AFVIndex.open(tmp_path / "idx", extractor) as again:
        assert again.count == 20 and again.dim == 128
        after = again.search(q, k=5)
        assert [[h.id for h in r] for r in after] == [[h.id for h in r] for r in before]
        assert after[0][0].id == results[0].id  # same image; batch-size float noise only:
        assert after[0][0].distance <= 1e-4 * float(np.linalg.norm(q[0]))
        meta = again.get(results[0].id)
        assert meta["path"] == images[0][0] and meta["sha256"] == hashlib.sha256(images[0][1]).hexdigest()
        assert {"id", "name", "size", "added_at"} <= meta.keys()


def _batch(extractor, imgs):
    import torch

    from model.data import decode_image

    return torch.from_numpy(np.stack([extractor.preprocess(decode_image(b)) for _, b in imgs]))


def test_add_delete_re_add(built, images):
    idx, results = built
    victim = results[4].id
    vec = idx.store.vectors([victim])[victim]
    assert idx.delete(victim) and not idx.delete(victim)
    assert idx.get(victim) is None and idx.count == 19
    assert victim not in [h.id for h in idx.search(vec, k=20)[0]]
    again = idx.add_images([(images[4][1], {"path": "again"})])[0]
    assert not again.duplicate and again.id != victim
    assert idx.search(vec, k=1)[0][0].id == again.id


def test_duplicates_return_the_existing_id(built, images):
    idx, results = built
    dup = idx.add_images([(images[2][1], {"path": "copy"}), (images[30][1], {}), (images[30][1], {})])
    assert dup[0].duplicate and dup[0].id == results[2].id
    assert not dup[1].duplicate and dup[2].duplicate and dup[2].id == dup[1].id
    assert idx.count == 21


def test_search_filters_on_metadata(built, images):
    idx, _ = built
    label = images[0][0].split("/")[0]
    q = idx.store.vectors([idx.search(np.zeros(128), k=1)[0][0].id])
    hits = idx.search(np.stack(list(q.values())), k=10, where={"label": label})[0]
    assert hits and all(h.metadata["label"] == label for h in hits)
    assert idx.search(np.zeros(128), k=3, where={"label": "no-such"}) == [[]]
    with pytest.raises(InvalidInputError):
        idx.search(np.zeros(128), where={"bad field": 1})


def test_bad_inputs_raise_clear_errors(built):
    idx, _ = built
    with pytest.raises(InvalidInputError):
        idx.search(np.zeros((1, 7)))
    with pytest.raises(InvalidInputError):
        idx.add_embedded(np.zeros((1, 128)), [{"name": "x"}])
    with pytest.raises(InvalidInputError):
        idx.add_images([(b"not an image", {})])
    with pytest.raises(InvalidInputError, match="reserved"):
        idx.add_embedded(np.zeros((1, 128)), [{"sha256": "0" * 64, "metadata": {"id": 3}}])


def test_create_twice_and_open_missing(tmp_path, extractor, built):
    with pytest.raises(IndexExistsError):
        AFVIndex.create(tmp_path / "idx", extractor)
    with pytest.raises(IndexNotFoundError):
        AFVIndex.open(tmp_path / "nothing", extractor)
    with pytest.raises(IndexLockedError):
        AFVIndex.open(tmp_path / "idx", extractor)


def test_other_model_or_statistics_are_refused(tmp_path, extractor, built):
    built[0].close()
    other_weights = AFVExtractor(
        extractor.d, extractor.g, extractor.stats, device=extractor.device, model_hash="f" * 64
    )
    with pytest.raises(IndexMismatchError, match="model weights"):
        AFVIndex.open(tmp_path / "idx", other_weights)
    stats = FisherStats(extractor.stats.mean, extractor.stats.var * 2, extractor.stats.n_samples)
    other_stats = AFVExtractor(
        extractor.d, extractor.g, stats, device=extractor.device, model_hash=extractor.model_hash
    )
    with pytest.raises(IndexMismatchError, match="Fisher statistics"):
        AFVIndex.open(tmp_path / "idx", other_stats)


def test_corrupt_files_give_clear_errors_and_repair(tmp_path, extractor, built):
    idx, results = built
    idx.close()
    faiss_file = next((tmp_path / "idx").glob("vectors-*.faiss"))
    faiss_file.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(IndexCorruptError, match="repair"):
        AFVIndex.open(tmp_path / "idx", extractor)
    with AFVIndex.repair(tmp_path / "idx", extractor) as fixed:
        assert fixed.count == 20 and fixed.vindex.ntotal == 20
    (tmp_path / "idx" / "meta.sqlite").write_bytes(b"not a database" * 1000)
    for f in (tmp_path / "idx").glob("meta.sqlite-*"):
        f.unlink()
    with pytest.raises(IndexCorruptError):
        AFVIndex.open(tmp_path / "idx", extractor)


def test_read_only_open_is_memory_mapped_and_refuses_writes(tmp_path, extractor, built):
    idx, results = built
    idx.close()
    with AFVIndex.open(tmp_path / "idx", extractor, read_only=True) as ro:
        assert ro.stats()["mmapped"] and ro.count == 20
        vec = ro.store.vectors([results[1].id])[results[1].id]
        assert ro.search(vec, k=1)[0][0].id == results[1].id
        with pytest.raises(IndexReadOnlyError):
            ro.delete(results[1].id)


@pytest.mark.slow  # PQ training: < 1 s on an idle core, ~30 s on this loaded 2-core machine
def test_auto_kind_switches_to_ivfpq_and_back_through_save(tmp_path, extractor, monkeypatch):
    import index.faiss_index as fi

    monkeypatch.setattr(fi, "MIN_TRAIN", 1_000)  # keep training small for the test
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(50, 32)).astype(np.float32)
    xb = (centers[rng.integers(0, 50, 4_000)] + 0.1 * rng.normal(size=(4_000, 32))).astype(np.float32)
    recs = [{"sha256": f"{i:064x}", "metadata": {}} for i in range(len(xb))]
    with AFVIndex.create(tmp_path / "big", extractor, dim=32, memory_budget=2**17) as idx:
        ids = [r.id for r in idx.add_embedded(xb, recs)]
        idx.save()
        s = idx.stats()
        assert s["kind"] in ("ivfpq", "opq-ivfpq") and s["bytes_per_vector"] < 4 * 32
        hits = idx.search(xb[:50], k=1, rerank=True)
        assert np.mean([h[0].id == i for h, i in zip(hits, ids[:50])]) >= 0.9
    with AFVIndex.open(tmp_path / "big", extractor) as again:
        assert again.stats()["kind"] == s["kind"] and again.count == 4_000


def test_auto_mode_uses_the_exact_projection(tmp_path):
    import torch

    from index.collection import AFVIndex
    from model.extract import AFVExtractor

    torch.manual_seed(0)
    ext = AFVExtractor.untrained("tiny", torch.device("cpu"), normalization="power")
    idx = AFVIndex.create(tmp_path / "idx", ext, dim=64)
    assert idx.stats()["mode"] == "exact"
    idx.close()

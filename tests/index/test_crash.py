"""Kill a writer process in the middle of adding; the index must reopen consistent with every ack."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from index import AFVIndex

DIM, BATCH = 16, 40

WRITER = r"""
import sys
import numpy as np
import index.collection as collection
from index import AFVIndex

collection.SAVE_EVERY = 90  # checkpoint often, so kills also land during FAISS saves
idx = AFVIndex.open(sys.argv[1])
rng = np.random.default_rng(1)
for b in range(10_000):
    xb = rng.normal(size=(%(batch)d, %(dim)d)).astype(np.float32)
    recs = [{"sha256": f"{b:032x}{i:032x}", "metadata": {"batch": b}} for i in range(%(batch)d)]
    ids = [r.id for r in idx.add_embedded(xb, recs)]
    np.save(f"{sys.argv[1]}/ack-{b}.npy", xb)
    print("ACK", b, *ids, flush=True)
""" % {"batch": BATCH, "dim": DIM}  # noqa: UP031 (the script's own f-strings use braces)


def _run_writer_and_kill(index_dir: Path, min_batches: int) -> dict[int, list[int]]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(index_dir)], stdout=subprocess.PIPE, text=True, env=env)
    acked: dict[int, list[int]] = {}
    deadline = time.monotonic() + 60
    try:
        while len(acked) < min_batches and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            _, b, *ids = line.split()
            acked[int(b)] = [int(i) for i in ids]
    finally:
        proc.send_signal(signal.SIGKILL)  # mid-batch: the writer never pauses between batches
        proc.wait()
    return acked


def test_killed_writer_loses_no_acknowledged_add(tmp_path):
    AFVIndex.create(tmp_path / "idx", dim=DIM).close()
    acked = _run_writer_and_kill(tmp_path / "idx", min_batches=8)
    assert len(acked) >= 8
    with AFVIndex.open(tmp_path / "idx") as idx:
        assert idx.count % BATCH == 0  # a batch is one transaction: all or nothing
        assert idx.vindex.ntotal == idx.count >= BATCH * len(acked)
        for b, ids in acked.items():
            xb = np.load(tmp_path / "idx" / f"ack-{b}.npy") if (tmp_path / "idx" / f"ack-{b}.npy").exists() else None
            assert all(idx.get(i) is not None and idx.get(i)["batch"] == b for i in ids)
            if xb is not None:
                hits = idx.search(xb[:3], k=1)
                assert [h[0].id for h in hits] == ids[:3]
        more = idx.add_embedded(np.ones((1, DIM), np.float32), [{"sha256": "e" * 64}])
        assert not more[0].duplicate
    with AFVIndex.open(tmp_path / "idx") as idx:
        assert idx.get(more[0].id) is not None and idx.vindex.ntotal == idx.count

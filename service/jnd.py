"""Just-noticeable-difference threshold: fitting from judged pairs, persistence, a synthetic fallback.

A pair is judged "same" when its Fisher distance is at most the threshold. `fit_threshold` picks the
threshold that agrees best with (possibly fractional) human "same" judgments, as in BAPPS JND. The
fitted value is stored in DATA_DIR/jnd.json pinned to the model's hash. Without a calibration or a
configured value the server fits one on synthetic pairs (imperceptible ±1-level noise vs strong
noise) so that it always answers, and says `source: synthetic`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from durable import atomic_write_bytes
from service.schemas import JNDThreshold

log = logging.getLogger(__name__)


def fit_threshold(distances: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """Threshold maximising expected agreement with the judgments; returns (threshold, accuracy).

    distances: n ≥ 1 non-negative floats; same: n values in [0, 1] (fraction of judges saying same).
    Candidates are midpoints between consecutive sorted distances plus both ends.
    """
    d = np.asarray(distances, dtype=np.float64)
    p = np.asarray(same, dtype=np.float64)
    if d.ndim != 1 or d.shape != p.shape or d.size == 0:
        raise ValueError("distances and judgments must be two equally long, non-empty 1-D arrays")
    order = np.argsort(d, kind="stable")
    d, p = d[order], p[order]
    # agreement(t after the first i pairs) = Σ_{j<i} p_j + Σ_{j≥i} (1 − p_j)
    same_below = np.concatenate([[0.0], np.cumsum(p)])
    diff_above = np.concatenate([np.cumsum((1 - p)[::-1])[::-1], [0.0]])
    agreement = same_below + diff_above
    i = int(np.argmax(agreement))
    if i == 0:
        t = d[0] / 2
    elif i == d.size:
        t = d[-1] * 1.5 if d[-1] > 0 else 1.0
    else:
        t = (d[i - 1] + d[i]) / 2
    return float(t), float(agreement[i] / d.size)


def load(path: Path, model_hash: str) -> JNDThreshold | None:
    """A saved calibration for this model, or None (missing, unreadable or for other weights)."""
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable JND calibration %s: %s", path, e)
        return None
    if saved.get("model_hash") != model_hash:
        log.warning("ignoring JND calibration %s: it belongs to other model weights", path)
        return None
    return JNDThreshold(
        threshold=saved["threshold"],
        source="calibrated",
        n_pairs=saved.get("n_pairs", 0),
        accuracy=saved.get("accuracy"),
    )


def save(path: Path, t: JNDThreshold, model_hash: str) -> None:
    """Write atomically (temp file, fsync, rename): a crash keeps the previous calibration."""
    atomic_write_bytes(path, json.dumps({**t.model_dump(), "model_hash": model_hash}, indent=2).encode())


def synthetic_pairs(resolution: int, n: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n smooth random images; 'same' copies with ±1 noise, 'different' copies with σ=32 noise.

    Returns xa, xb (2n×3×R×R uint8) and same (2n floats).
    """
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(n, 3, 4, 4))
    reps = -(-resolution // 4)
    base = np.kron(coarse, np.ones((1, 1, reps, reps)))[:, :, :resolution, :resolution]
    light = base + rng.integers(-1, 2, size=base.shape)
    strong = base + rng.normal(0, 32, size=base.shape)
    xa = np.concatenate([base, base]).clip(0, 255).astype(np.uint8)
    xb = np.concatenate([light, strong]).clip(0, 255).astype(np.uint8)
    return xa, xb, np.concatenate([np.ones(n), np.zeros(n)])

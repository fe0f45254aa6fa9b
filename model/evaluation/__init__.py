"""Evaluation suite: BAPPS 2AFC / JND scores, linear and k-NN probes, class-by-class set distances.

Every score can be computed for the trained AFV metric and for its baselines (`metrics.METRICS`), so
each number has its comparison in the same run. Pure computation lives here; file/CLI I/O is at the
edges (`bapps` loaders, `service/cli/eval.py`).
"""

from model.evaluation.metrics import METRICS, Metric, get_metric

__all__ = ["METRICS", "Metric", "get_metric"]

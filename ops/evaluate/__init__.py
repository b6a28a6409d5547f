"""Evaluation: MC prediction and ensemble-size sweeps (engine), streaming metrics, bootstrap intervals, reports.

    from ops.evaluate import sweep, test, predict_log_probs, Metrics, bootstrap
"""
from ops.evaluate.engine import PAPER_SIZES, predict, predict_log_probs, sweep, test
from ops.evaluate.intervals import bootstrap
from ops.evaluate.metrics import Metrics, summarize

__all__ = ["PAPER_SIZES", "predict", "predict_log_probs", "sweep", "test", "bootstrap", "Metrics", "summarize"]

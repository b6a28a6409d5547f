"""`make paper`: every claim of the original checked on the reference networks, one report with verdicts.

    python -m ops.paper                                   # configs/fashion_mnist_reference.json, the full report
    python -m ops.paper --quick                           # fewer images and masks (make paper QUICK=1)
    python -m ops.paper --check --config configs/cifar100_reference.json   # validate only, say what is missing

Rooms: settings (what is measured, FULL / QUICK / SMOKE), claims (the seven claims and the paper's values),
stages (one measurement per claim), pipeline (the run folder, caching, progress), report (Markdown, HTML, JSON),
figures (which plot draws what), smoke (the CI's tiny set).
"""
from ops.paper.pipeline import PaperError, run

__all__ = ["PaperError", "run"]

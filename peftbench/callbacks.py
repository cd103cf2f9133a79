"""Hydra callbacks: build the comparison report when a sweep ends."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

log = logging.getLogger("peftbench")


class ReportAtSweepEnd(Callback):
    """Writes tables and plots from every record in ``results_dir`` once a multirun ends."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        from analysis.report import build_report

        results_dir = Path(config.results_dir)
        try:
            paths = build_report(results_dir=results_dir)
        except ValueError as error:  # e.g. no success record yet: say so, don't crash
            log.warning("no report: %s", error)
            return
        print(f"\nReport written to {paths[0].parent}:")
        for path in paths:
            print(f"  {path}")

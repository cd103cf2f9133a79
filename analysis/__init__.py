"""Views of the run records: tables, plots and reports. Records stay the source of truth."""

from analysis.frame import latest_success, load_records, quality_runs, select
from analysis.report import build_report

__all__ = ["build_report", "latest_success", "load_records", "quality_runs", "select"]

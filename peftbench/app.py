"""The Hydra app: one run, or with ``-m`` a sweep. ``run.py`` and ``peftbench run`` both start it.

Offline by default: without the three variables below, Hub look-ups stall 20-50 s before
failing on a machine with no network. Users with network set ``HF_HUB_OFFLINE=0``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE"):
    os.environ.setdefault(_var, "1")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from peftbench.config.paths import CONF_DIR  # noqa: E402
from peftbench.launch import exit_codes  # noqa: E402
from peftbench.runner import pinned_source  # noqa: E402


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _task(cfg: DictConfig) -> dict | float:
    from peftbench.config.checks import input_errors_exit
    from peftbench.launch.tune import is_tuning, objective
    from peftbench.runner.experiment import run

    with input_errors_exit():  # a bad config, data file or asset: one line, exit 2
        summary = run(cfg)
    exit_codes.note(summary)  # a failed run is recorded and the sweep goes on; exit 1 at the end
    return objective(summary) if is_tuning() else summary  # the Optuna sweeper wants a number


def main(argv: Sequence[str] | None = None, prog: str = "run.py") -> None:
    """Checks every job of the command line, then hands it to Hydra.

    Args:
        argv: Hydra's arguments (default ``sys.argv[1:]``), e.g. ``["-m", "method=lora,bitfit"]``;
            ``-cd DIR`` (``--config-dir``) adds a folder of the user's own method/, task/ ...
            YAMLs to the search path.
        prog: the program name Hydra's messages show.
    """
    from peftbench.config.precheck import check_command_line
    from peftbench.errors import ConfigError, exit_with

    argv = list(sys.argv[1:] if argv is None else argv)
    try:  # every job of the sweep, before Hydra starts or torch is imported
        check_command_line(argv, conf_dir=CONF_DIR)
    except ConfigError as error:
        exit_with(str(error))
    sys.argv = [prog, *argv]  # Hydra reads the command line from sys.argv
    exit_codes.start()
    pinned_source.pin()  # a sweep's later jobs run this code and conf/, or none (exit 3)
    try:
        _task()
    except KeyboardInterrupt:  # Ctrl-C outside a run (composing, launching): no traceback
        print("peftbench: interrupted", file=sys.stderr)
        sys.exit(130)
    finally:  # also on a stop signal's exit: earlier failures of the sweep are still said
        code = exit_codes.finish(sweep=any(a in ("-m", "--multirun") for a in argv))
    if code:
        sys.exit(code)

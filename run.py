"""Entry point: `python run.py` runs one cell, `python run.py -m method=lora,prefix` a sweep."""

import os
import sys
from pathlib import Path

# Offline by default: without these, Hub look-ups stall 20-50 s before failing on a machine
# with no network. Users with network set HF_HUB_OFFLINE=0 to load Hub ids.
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE"):
    os.environ.setdefault(_var, "1")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict | float:
    from peftbench.config import input_errors_exit
    from peftbench.experiment import run
    from peftbench.tune import is_tuning, objective

    with input_errors_exit():  # a bad config, data file or asset: one line, exit 2
        summary = run(cfg)
    return objective(summary) if is_tuning() else summary  # the Optuna sweeper wants a number


if __name__ == "__main__":
    from peftbench.config import ConfigError, exit_with
    from peftbench.precheck import check_command_line

    try:  # every job of the sweep, before Hydra starts or torch is imported
        check_command_line(sys.argv[1:], conf_dir=Path(__file__).resolve().parent / "conf")
    except ConfigError as error:
        exit_with(str(error))
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C outside a run (composing, launching): no traceback
        print("peftbench: interrupted", file=sys.stderr)
        sys.exit(130)

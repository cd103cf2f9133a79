"""Entry point: `python run.py` runs one cell, `python run.py -m method=lora,prefix` a sweep."""

import os

# Offline by default: without these, Hub look-ups stall 20-50 s before failing on a machine
# with no network. Users with network set HF_HUB_OFFLINE=0 to load Hub ids.
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE"):
    os.environ.setdefault(_var, "1")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict:
    from peftbench.experiment import run

    return run(cfg)


if __name__ == "__main__":
    main()

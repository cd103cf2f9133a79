"""The version-2 write-up's second-size comparison (docs/benchmarks/offline-2026-12-05/sizes.py):
it must judge both sizes over the same methods and the same Holm family."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "docs/benchmarks/offline-2026-12-05/sizes.py"
PAIR_COLUMNS = ("task", "model", "better", "worse", "diff", "ci_low", "ci_high", "p", "p_holm",
                "separated", "n_examples", "n_resamples")  # fmt: skip


@pytest.fixture(scope="module")
def sizes():
    spec = importlib.util.spec_from_file_location("sizes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _report(folder: Path, model: str, means: dict[str, float], pairs: list[tuple]) -> Path:
    """A report folder as `peftbench report` writes it, with only what sizes.py reads."""
    folder.mkdir()
    with open(folder / "comparison.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "method", "polarity/mean", "polarity/std",
                         "polarity/n_collapsed", "trainable_pct"])  # fmt: skip
        for method, mean in means.items():
            writer.writerow([model, method, mean, 0.01, 0, 1.0])
    with open(folder / "pairs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(PAIR_COLUMNS)
        for better, worse, p in pairs:
            # p_holm and separated as a 210-pair family would leave them: sizes.py must redo them
            writer.writerow(["polarity", model, better, worse, -0.02, -0.03, -0.01, p, 1.0,
                             False, 2000, 10500])  # fmt: skip
    (folder / "comparison.md").write_text("polarity: 5 seeds × 2,000 test examples detect 1.7; ")
    return folder


def test_subset_family_order_flip_and_ranks(sizes, tmp_path, capsys):
    small = _report(
        tmp_path / "small",
        "minilm-l6",
        {"full": 0.80, "lora": 0.79, "prompt": 0.70, "bitfit": 0.78},
        # bitfit is not in the large model's subset: its pairs leave the family
        [("full", "lora", 0.01), ("full", "prompt", 0.3), ("lora", "prompt", 0.2),
         ("full", "bitfit", 0.0001), ("lora", "bitfit", 0.0001)],  # fmt: skip
    )
    large = _report(
        tmp_path / "large",
        "smollm2-135m",
        {"full": 0.85, "lora": 0.86, "prompt": 0.84},
        [("lora", "full", 0.001), ("full", "prompt", 0.4), ("lora", "prompt", 0.5)],
    )
    sizes.main(["--small", str(small), "--large", str(large)])
    out = capsys.readouterr().out

    # Holm over the subset's 3 pairs: 0.01 x 3 = 0.03 < 0.05, separated at the small size too
    assert "Holm over the subset's 3 pairs): minilm-l6 1, smollm2-135m 1" in out
    assert "- at both sizes: 1" in out
    assert "**(the order flips)**" in out
    # ranks: lora first at the large size, second at the small: one place up
    assert "| lora | 79.0 ± 1.0 | 2 | 86.0 ± 1.0 | 1 | +1 |" in out
    assert "bitfit" not in out


def test_too_few_shared_methods_is_a_clear_error(sizes, tmp_path):
    small = _report(tmp_path / "small", "minilm-l6", {"full": 0.8, "lora": 0.7}, [])
    large = _report(tmp_path / "large", "smollm2-135m", {"full": 0.8, "lora": 0.7}, [])
    with pytest.raises(SystemExit, match="2 methods at both sizes"):
        sizes.main(["--small", str(small), "--large", str(large)])

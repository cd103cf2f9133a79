"""The write-up's figures for one task, recomputed from final/records.

    python docs/benchmarks/offline-2026-12-02/diagnostics/paired_tests.py TASK

Prints the test table (mean, sd, the 3 seeds), the paired t-tests of the four pre-registered
questions (scipy.stats.ttest_rel over the shared seeds, raw p: one comparison each), the
seed-0 selection-bias check and the dev-test gap. Reads records only; trains nothing.
"""

import sys
from pathlib import Path

import numpy as np
from scipy import stats

from analysis.frame import load_records
from analysis.stats import paired_test

FINAL = Path(__file__).resolve().parents[1] / "final"
QUESTIONS = [  # (a, b): is a above b?  Grouped by the write-up's pre-registered questions.
    (
        "1 Delta Tuning",
        [
            ("full", "lora"),
            ("full", "adapter"),
            ("lora", "prefix"),
            ("adapter", "prefix"),
            ("prefix", "prompt"),
        ],
    ),
    (
        "2 LoRA vs full",
        [("full", "lora"), ("full", "dora"), ("full", "pfeiffer"), ("full", "loha")],
    ),
    ("3 P-Tuning v2", [("prefix", "prompt"), ("prefix", "ptuning"), ("lora", "prefix")]),
    (
        "4 Lester",
        [("full", "prompt"), ("full", "ptuning"), ("prompt", "linear"), ("ptuning", "linear")],
    ),
]


def load(task, results=FINAL):
    """method -> seed -> test and dev primary metric, selected step and training seconds."""
    runs = {}
    df = load_records(results)
    df = df[(df.task == task) & (df.status == "success")]
    for row in df.itertuples():
        runs.setdefault(row.method, {})[row.seed] = {
            "test": row.primary_value,
            "dev": row.dev_value,
            "train_s": row.train_time_s,
        }
    return runs


def paired(runs, a, b):
    """Mean and sd of a - b over the shared seeds, and the paired t-test's p (analysis.stats)."""
    test = paired_test(
        {s: r["test"] for s, r in runs[a].items()}, {s: r["test"] for s, r in runs[b].items()}
    )
    seeds = sorted(set(runs[a]) & set(runs[b]))
    d = np.array([runs[a][s]["test"] - runs[b][s]["test"] for s in seeds])
    return d.mean(), d.std(ddof=1), test.p, test.n


def main(task, results=FINAL):
    runs = load(task, results)
    print(f"## {task}: test x100, mean ± sd (seeds)  dev mean  train s")
    order = sorted(runs, key=lambda k: -np.mean([r["test"] for r in runs[k].values()]))
    for k in order:
        t = [runs[k][s]["test"] * 100 for s in sorted(runs[k])]
        dev = np.mean([r["dev"] for r in runs[k].values()])
        secs = np.mean([r["train_s"] for r in runs[k].values()])
        print(
            f"{k:12s} {np.mean(t):5.1f} ± {np.std(t, ddof=1):3.1f}  "
            f"({', '.join(f'{v:.2f}' for v in t)})  dev {dev:.3f}  {secs:5.0f} s"
        )
    for title, pairs in QUESTIONS:
        print(f"\n### {title}")
        for a, b in pairs:
            mean, sd, p, n = paired(runs, a, b)
            print(f"{a} - {b}: {mean * 100:+.1f} ± {sd * 100:.1f} (paired p = {p:.3f}, n = {n})")
    bias = [runs[k][0]["dev"] - np.mean([runs[k][s]["dev"] for s in (1, 2)]) for k in runs]
    print(
        f"\nseed-0 dev minus mean of seeds 1,2: {np.mean(bias):+.4f}"
        f" (sd {np.std(bias, ddof=1):.4f}),"
        f" positive in {sum(b > 0 for b in bias)} of {len(bias)}"
    )
    dev = np.array([np.mean([r["dev"] for r in runs[k].values()]) for k in runs])
    test = np.array([np.mean([r["test"] for r in runs[k].values()]) for k in runs])
    gap = dev - test
    rho, p_rho = stats.spearmanr(dev, gap)
    print(
        f"dev - test: {gap.min():+.3f} .. {gap.max():+.3f}, mean {gap.mean():+.3f};"
        f" vs dev: Spearman {rho:.2f} (p {p_rho:.3f}), Pearson {stats.pearsonr(dev, gap)[0]:.2f}"
    )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "polarity")

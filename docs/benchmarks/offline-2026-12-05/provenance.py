"""Which code made which runs, and the compute they took, read from the records alone:

    python docs/benchmarks/offline-2026-12-05/provenance.py [TASK ...]
    python docs/benchmarks/offline-2026-12-05/provenance.py --update   # into README.md

A row per task, stage and commit, in the order the runs started: how many runs, how many
recorded a clean tree, how many resumed from a checkpoint (a chunk stopped mid-run), the files
that made the others dirty (`code.dirty_paths`, where the record has it), when they ran, on
which VM build (`env.platform`: the host's pace changed with it), and their training hours.
Stages: `grid` (the 4-point grid on the selection seed), `extension` (a scale `extend` added,
listed in `extensions.json`), `final` (seeds 0-4, test read once), and the folders outside
the protocol (`probes`, the superseded grids). Hours are the sum of the runs' wall times
(`seconds`) over two: two runs shared the machine throughout (the benchmark's two lanes, or a
2-worker sweep), and these are the write-up's compute figures.
The clean cost runs (`costs/`) write no run records; their minutes are in the write-up.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

from peftbench.records.schema import Record

HERE = Path(__file__).resolve().parent
FOLDERS = {  # records folder -> stage ("grid" splits into grid and extension)
    "grid/records": "grid",
    "final/records": "final",
    "probes/records": "probes (outside the protocol)",
    "hedge-300-steps/grid/records": "superseded grid (300 steps)",
    "verse-paraphrase-476-steps/grid/records": "superseded grid (476 steps)",
    "bbc-news-sdpa/grid/records": "superseded grid (SDPA)",
}
LANES = 2  # runs at a time on the 2 cores
BEGIN, END = "<!-- provenance.py: begin -->", "<!-- provenance.py: end -->"


def records(folder: Path):
    for path in sorted(folder.glob("*__success.json")):
        yield json.loads(path.read_text())


def stage_of(folder: str, record: dict, extended: dict[str, list[float]]) -> str:
    if FOLDERS[folder] != "grid":
        return FOLDERS[folder]
    e = record["experiment"]
    cell = f"{e['task']}--{e['model']}--{e['method']}"
    scale = record["config"]["method"]["lr_scale"]
    return "extension" if scale in extended.get(cell, []) else "grid"


def dirty_summary(runs: list[dict]) -> str:
    """The dirty paths the runs name, shortened to their folders where many."""
    paths = sorted({p for r in runs for p in r["code"].get("dirty_paths", [])})
    if not paths:
        return "–" if all(not r["code"]["git_dirty"] for r in runs) else "(not recorded)"
    short = sorted({p if len(paths) <= 3 else p.rsplit("/", 1)[0] + "/" for p in paths})
    return ", ".join(f"`{p}`" for p in short)


def seconds(record: dict) -> float:
    """A run's whole wall time (`Record.wall_s`: a resumed run's includes the loop before the
    stop, which older records' `cost.wall_s` left out)."""
    return Record.from_json(record).wall_s or 0.0


def hours(runs: list[dict]) -> float:
    return sum(map(seconds, runs)) / 3600 / LANES


def grouped(tasks: set[str] | None) -> dict[tuple, list[dict]]:
    """(task, stage, short commit) -> its records."""
    extended = json.loads((HERE / "extensions.json").read_text())
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for folder in FOLDERS:
        if not (HERE / folder).is_dir():
            continue
        for r in records(HERE / folder):
            task = r["experiment"]["task"]
            if tasks and task not in tasks:
                continue
            groups[(task, stage_of(folder, r, extended), r["code"]["git_sha"][:7])].append(r)
    return groups


def hosts(runs: list[dict]) -> str:
    """The kernel builds the runs' VM reported (`env.platform`): the host's pace moved with
    it (bf16 matmul 499 GFLOP/s under fc-v1272, 213 under fc-v1300; docs/PERFORMANCE.md)."""
    builds = sorted({r["env"]["platform"].split("-x86_64")[0].removeprefix("Linux-") for r in runs})
    return ", ".join(builds)


def commit_table(groups: dict[tuple, list[dict]]) -> list[str]:
    lines = [
        "| task | stage | commit | runs | clean | resumed | dirty from | ran (UTC) | VM | hours |",
        "| :-- | :-- | :-- | --: | --: | --: | :-- | :-- | :-- | --: |",
    ]
    order = sorted(groups, key=lambda k: (k[0], min(r["created_at"] for r in groups[k])))
    for task, stage, sha in order:
        runs = groups[(task, stage, sha)]
        clean = sum(not r["code"]["git_dirty"] for r in runs)
        resumed = sum(bool(r["cost"]["checkpoint"].get("resumed_from_step")) for r in runs)
        start = min(r["created_at"] for r in runs)[5:16].replace("T", " ")
        end = max(r["finished_at"] for r in runs)[5:16].replace("T", " ")
        lines.append(
            f"| {task} | {stage} | `{sha}` | {len(runs)} | {clean} | {resumed} "
            f"| {dirty_summary(runs)} | {start} to {end} | {hosts(runs)} | {hours(runs):.2f} |"
        )
    return lines


def totals_table(groups: dict[tuple, list[dict]]) -> list[str]:
    """Hours (runs) per task and stage; "other": superseded grids and probes."""
    stages = ["grid", "extension", "final", "other"]
    per: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for (task, stage, _), runs in groups.items():
        per[task][stage if stage in stages else "other"] += runs
        per["all"][stage if stage in stages else "other"] += runs
    lines = ["| task | " + " | ".join(stages) + " | all |", "| :-- |" + " --: |" * 5]
    for task in sorted(per, key=lambda t: (t == "all", t)):
        by_stage = per[task]
        cells = [
            f"{hours(by_stage[s]):.1f} h ({len(by_stage[s])})" if by_stage[s] else "–"
            for s in stages
        ]
        every = [r for runs in by_stage.values() for r in runs]
        lines.append(f"| {task} | " + " | ".join(cells) + f" | {hours(every):.1f} h |")
    return lines


def section(groups: dict[tuple, list[dict]]) -> str:
    """The write-up's block: the totals, then the per-commit table folded away."""
    return "\n".join(
        totals_table(groups)
        + ["", "<details><summary>Runs per commit (the same script)</summary>", ""]
        + commit_table(groups)
        + ["", "</details>"]
    )


def update_readme(block: str) -> None:
    """Replace what lies between the README's two markers, so the write-up cannot drift."""
    readme = HERE / "README.md"
    text = readme.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{block}\n{END}{tail}")


def main(argv: list[str]) -> None:
    update = "--update" in argv
    groups = grouped({a for a in argv if a != "--update"} or None)
    if update:
        update_readme(section(groups))
    else:
        print(section(groups))


if __name__ == "__main__":
    main(sys.argv[1:])

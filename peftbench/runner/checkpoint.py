"""Checkpoints of a long run, so a run killed mid-way resumes where it stopped.

A checkpoint is one safetensors file, ``<results>/checkpoints/<run_id>.safetensors``: the
tensors (trainable state, optimiser moments, best-dev snapshot, RNG states) in the body, and
everything else as JSON in the file's metadata header (loop position, best-dev selection,
scheduler, python/numpy RNG, history so far, timers). One file, written to a temp name and
renamed, so a reader sees the old checkpoint or the new one, never half of each. Nothing is
unpickled: safetensors and JSON only.

A resumed run on CPU with the same seed ends with the same metrics and history as one that
was never interrupted: the data order (the sampler's epoch and position), dropout (torch's
RNG), the optimiser and a method's state outside its tensors (AdaLoRA's rank allocator) all
continue from the same state. A checkpoint written under another
recipe (another run id, peftbench/config/identity.py) is never resumed.
"""

from __future__ import annotations

import json
import logging
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from peftbench.records.store import _umask  # the umask, read without changing it

log = logging.getLogger("peftbench")

FORMAT_VERSION = 2  # 2: matched on the run id (recipe hash), not a config hash
CHECKPOINTS_DIR = "checkpoints"
#: Config keys that cannot change what a run computes: a resume ignores them.


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class LoopState:
    """What the training loop carries from step to step, and over a resume."""

    step: int = 0  # optimisation steps done
    best_value: float | None = None
    best_step: int = 0
    best_dev: dict = field(default_factory=dict)
    best_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    elapsed_s: float = 0.0  # loop wall time before this process (a resumed run)


class Replay:
    """A list (the run's history) as checkpoint state; restored rows go to ``sink`` again.

    The sink is the tracker: a resumed run's wandb run then has the rows of the killed one.
    """

    def __init__(self, rows: list[dict], sink: Any = None) -> None:
        self.rows, self.sink = rows, sink

    def state_dict(self) -> dict:
        return {"rows": self.rows}

    def load_state_dict(self, state: dict) -> None:
        self.rows[:] = state["rows"]
        for row in self.rows if self.sink is not None else ():
            self.sink(row)


class Checkpointer:
    """Saves, finds and removes the checkpoint of one run.

    Args:
        path: the checkpoint file.
        every: save after every ``every`` optimisation steps; 0 = never.
        run_id: the run's id, recipe hash included (peftbench/config/identity.py); a checkpoint
            written under another id is not resumed.
        extras: run-level state kept outside the loop (history, step timer, evaluation clock);
            a checkpoint of older code without one of them still resumes.
        required: state a resume cannot do without (a method's, e.g. AdaLoRA's allocator):
            a checkpoint that lacks it is set aside and the run starts from step 1.
    """

    def __init__(
        self,
        path: Path,
        *,
        every: int,
        run_id: str,
        extras: dict[str, Stateful],
        required: dict[str, Stateful] | None = None,
    ) -> None:
        self.path, self.every, self.run_id = Path(path), every, run_id
        self.extras = {**extras, **(required or {})}
        self.required = set(required or ())
        self.seconds = 0.0  # spent saving: not training time
        self.resumed_from: int | None = None  # the step a resumed run started from

    @classmethod
    def for_run(
        cls, cfg: Any, run_id: str, extras: dict[str, Stateful], required: dict[str, Stateful]
    ) -> Checkpointer:
        path = checkpoint_path(Path(cfg.results_dir), run_id)
        every = int(cfg.train.get("checkpoint_every_steps") or 0)
        return cls(path, every=every, run_id=run_id, extras=extras, required=required)

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def save(self, state: LoopState, model, optimizer, scheduler, sampler, *, elapsed_s: float):
        """Writes the checkpoint after ``state.step`` steps (temp file, then rename)."""
        start = time.perf_counter()
        tensors: dict[str, torch.Tensor] = {}
        loop = {k: v for k, v in asdict(state).items() if k != "best_state"}
        meta = {
            "format": FORMAT_VERSION,
            "run_id": self.run_id,
            "loop": {**loop, "elapsed_s": elapsed_s},
            "model": _flatten(_trainable(model), "model", tensors),
            "best_state": _flatten(state.best_state, "best", tensors),
            "optimizer": _flatten(optimizer.state_dict(), "optim", tensors),
            "scheduler": _flatten(scheduler.state_dict(), "sched", tensors),
            "sampler": _flatten(sampler.state_dict(), "sampler", tensors),
            # the loop runs whole epochs, so the position in this epoch follows from the step
            "sampler_skip": (state.step - 1) % len(sampler) + 1 if state.step else 0,
            "rng": _flatten(_rng_state(), "rng", tensors),
            "extras": {
                name: _flatten(extra.state_dict(), f"extra.{name}", tensors)
                for name, extra in self.extras.items()
            },
            "checkpoint_s": self.seconds,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".tmp-{self.path.stem}-")
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata={"peftbench": json.dumps(meta)})
            # mkstemp and safetensors both write 0600, which would keep a colleague who shares
            # the results folder from resuming the run: a record's mode, 0666 less the umask
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, self.path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        self.seconds += time.perf_counter() - start

    def restore(self, model, optimizer, scheduler, sampler) -> LoopState | None:
        """Puts a matching checkpoint's state back everywhere; None when there is none.

        A checkpoint that cannot be read back whole (truncated, overwritten, from another
        model) is set aside and the run starts from step 1: it is read and checked in full
        before anything of it is applied, so a bad file never half-restores a model.
        """
        loaded = self._load()
        if loaded is None:
            return None
        meta, tensors = loaded
        try:
            missing = sorted(self.required - set(meta["extras"]))
            if missing:
                raise ValueError(f"it holds no {', '.join(missing)} state (older code)")
            parts = {k: _unflatten(meta[k], tensors) for k in _STATE_PARTS}
            extras = {
                name: _unflatten(meta["extras"][name], tensors)
                for name in self.extras
                if name in meta["extras"]  # a checkpoint of older code lacks newer extras
            }
            _check_trainable(model, parts["model"])
            state = LoopState(**meta["loop"], best_state=parts["best_state"])
            skip, seconds = int(meta["sampler_skip"]), float(meta["checkpoint_s"])
        except (KeyError, TypeError, ValueError) as error:
            self._set_aside(f"{type(error).__name__}: {error}")
            return None
        _load_trainable(model, parts["model"])
        optimizer.load_state_dict(parts["optimizer"])
        scheduler.load_state_dict(parts["scheduler"])
        sampler.load_state_dict(parts["sampler"], skip=skip)
        for name, extra in self.extras.items():
            if name in extras:  # a checkpoint of older code lacks newer extras
                extra.load_state_dict(extras[name])
        _set_rng_state(parts["rng"])
        self.seconds = seconds
        log.info("%s: resuming from step %d", self.path.stem, state.step)
        self.resumed_from = state.step
        return state

    def _load(self) -> tuple[dict, dict[str, torch.Tensor]] | None:
        if not self.path.is_file():
            return None
        try:
            with safe_open(str(self.path), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("peftbench", "{}"))
                names = list(f.keys())  # a safe_open handle is not iterable
                tensors = {name: f.get_tensor(name) for name in names}
        except Exception as error:  # safetensors' own error types, OSError, bad JSON
            self._set_aside(f"{type(error).__name__}: {error}")
            return None
        if not isinstance(meta, dict):
            self._set_aside("its metadata is not an object")
            return None
        if meta.get("format") != FORMAT_VERSION or meta.get("run_id") != self.run_id:
            log.warning(
                "%s: checkpoint %s was written for another run; starting fresh",
                self.path.stem,
                self.path,
            )
            return None
        return meta, tensors

    def _set_aside(self, why: str) -> None:
        """Renames an unreadable checkpoint ``<name>.corrupt`` (kept, never resumed) and says
        so in one line: the run starts over instead of failing the same way on every try."""
        aside = self.path.with_name(f"{self.path.name}.corrupt")
        try:
            os.replace(self.path, aside)
        except OSError:
            self.path.unlink(missing_ok=True)
            aside = None
        log.warning(
            "%s: checkpoint %s cannot be resumed (%s); %s; starting from step 1",
            self.path.stem,
            self.path,
            " ".join(why.split())[:200],
            f"set aside as {aside}" if aside else "removed",
        )


#: The state sections of a checkpoint's metadata, each read back before any is applied.
_STATE_PARTS = ("model", "best_state", "optimizer", "scheduler", "sampler", "rng")


def _check_trainable(model: torch.nn.Module, state: Any) -> None:
    """The saved trainable tensors must be this model's, name and shape (else ValueError)."""
    if not isinstance(state, dict):
        raise ValueError("no trainable state")
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    for name, value in state.items():
        if name not in tensors or tensors[name].shape != value.shape:
            raise ValueError(f"tensor {name!r} does not fit this model")


def checkpoint_path(results_dir: Path, run_id: str) -> Path:
    return Path(results_dir) / CHECKPOINTS_DIR / f"{run_id}.safetensors"


def remove_checkpoint(results_dir: Path, run_id: str) -> None:
    """Deletes a run's checkpoint and the temp files of killed writers (after success)."""
    path = checkpoint_path(results_dir, run_id)
    path.unlink(missing_ok=True)
    for tmp in path.parent.glob(f".tmp-{path.stem}-*"):
        tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------------ state <-> file


def _flatten(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON for ``value`` with its tensors moved into ``tensors`` (referenced by name).

    Dicts become ``{"__items__": [[key, value], ...]}`` so integer keys (the optimiser's
    parameter ids) come back as integers.
    """
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, dict):
        return {"__items__": [[k, _flatten(v, f"{key}.{k}", tensors)] for k, v in value.items()]}
    if isinstance(value, list | tuple):
        return [_flatten(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]
    return value


def _unflatten(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_unflatten(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__ndarray__" in value:
        return np.array(value["__ndarray__"], dtype=value["dtype"])
    return {k: _unflatten(v, tensors) for k, v in value["__items__"]}


def _trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    from peftbench.methods.base import trainable_state

    return trainable_state(model)


def _load_trainable(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    with torch.no_grad():
        for name, value in state.items():
            tensors[name].copy_(value)


def _rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

"""Shared instrumentation: it wraps the training loop, it never lives inside it.

Every run is measured the same way: a step timer (warm-up steps reported apart), an evaluation
clock subtracted from training time, peak memory per phase (set-up, training, evaluation),
reset at the start of each run because Hydra's basic launcher runs every job of a sweep in
one process, and the FLOPs of one real training step as the hardware executes them
(``torch.utils.flop_counter``), not a parameter-count formula.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

_PROC_STATUS = Path("/proc/self/status")
_PROC_CLEAR_REFS = Path("/proc/self/clear_refs")


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


class StepTimer:
    """Times training steps; the first ``warmup`` steps are reported apart."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup = warmup
        self.device = device
        self.durations: list[float] = []
        self.samples = 0
        self.tokens = 0
        self.padded_tokens = 0  # what the hardware computed on, padding included
        self.padded_tokens_all = 0  # the same, warm-up steps included (for the run's FLOPs)

    @contextmanager
    def step(self, batch: dict) -> Iterator[None]:
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":  # kernels are asynchronous: wait before reading the clock
            torch.cuda.synchronize(self.device)
        self.durations.append(time.perf_counter() - start)
        self.padded_tokens_all += batch["input_ids"].numel()
        if len(self.durations) > self.warmup:  # throughput counts measured steps only
            self.samples += len(batch["input_ids"])
            mask = batch.get("attention_mask")
            self.tokens += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
            self.padded_tokens += batch["input_ids"].numel()

    def summary(self) -> dict:
        """Step-time statistics and throughput over the steps after the warm-up.

        A run no longer than its warm-up has no measured step: its statistics are null and
        ``why_null`` says so (a warm-up step's time includes one-off work such as allocation).
        """
        warm = self.durations[: self.warmup]
        measured = sorted(self.durations[self.warmup :])
        total = sum(measured)
        why = None
        if not measured:
            why = (
                f"all {len(warm)} steps fell in the timer's warm-up "
                f"(train.warmup_steps_excluded={self.warmup}); run more steps to time them"
            )
        return {
            "step_time_s": {
                "mean": statistics.fmean(measured) if measured else None,
                "p50": _percentile(measured, 50) if measured else None,
                "p90": _percentile(measured, 90) if measured else None,
                "p99": _percentile(measured, 99) if measured else None,
                "n": len(measured),
                "warmup_n": len(warm),
                "warmup_mean": statistics.fmean(warm) if warm else None,
                "why_null": why,
            },
            "samples_per_s": self.samples / total if total else None,
            # non-padding tokens (attention_mask == 1), per second of measured step time
            "tokens_per_s": self.tokens / total if total else None,
            "padded_tokens_per_s": self.padded_tokens / total if total else None,
        }

    @property
    def measured_seconds(self) -> float:
        return sum(self.durations[self.warmup :])

    def state_dict(self) -> dict:
        """The counts so far: a resumed run's statistics then cover the whole run."""
        return {k: v for k, v in vars(self).items() if k != "device"}

    def load_state_dict(self, state: dict) -> None:
        vars(self).update(state)


class Clock:
    """Accumulates wall time spent inside ``with clock.measure():`` blocks."""

    def __init__(self) -> None:
        self.seconds = 0.0

    @contextmanager
    def measure(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start

    def state_dict(self) -> dict:
        return {"seconds": self.seconds}

    def load_state_dict(self, state: dict) -> None:
        self.seconds = state["seconds"]


class EvalClock(Clock):
    """The evaluation clock that also books evaluation's memory apart from training's.

    The training loop wraps every evaluation in ``with eval_clock.measure():``; with this
    clock the peak memory of those blocks (batch ``eval_batch_size``, 8x the training batch
    by default) goes to the ``eval`` phase of ``memory``, not to the training peak, and
    their energy is subtracted from ``energy``'s training figure.
    """

    def __init__(self, memory: PhasedPeakMemory, energy: EnergyMeter | None = None) -> None:
        super().__init__()
        self.memory = memory
        self.energy = energy  # evaluations' energy is booked apart from training's

    @contextmanager
    def measure(self) -> Iterator[None]:
        excluded = self.energy.exclude() if self.energy else contextlib.nullcontext()
        with self.memory.phase("eval"), excluded, super().measure():
            yield


def _read_status_kb(field: str) -> int | None:
    try:
        for line in _PROC_STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory of one run: CUDA allocated/reserved, and the process's resident set."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def reset(self) -> None:
        """Starts a new high-water mark (Linux: writing 5 to clear_refs resets VmHWM)."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        if sys.platform.startswith("linux"):
            # e.g. a hardened kernel refuses: the peak then covers the whole process
            with contextlib.suppress(OSError):
                _PROC_CLEAR_REFS.write_text("5")

    def read(self) -> dict:
        on_cuda = self.device.type == "cuda"
        return {
            "allocated": torch.cuda.max_memory_allocated(self.device) if on_cuda else None,
            "reserved": torch.cuda.max_memory_reserved(self.device) if on_cuda else None,
            "rss": _read_status_kb("VmHWM"),
            # now, not a peak (NVML keeps none): CUDA context + allocator cache + other libraries
            "device_process": nvml_process_bytes(self.device) if on_cuda else None,
        }


def rss_peak_resettable() -> bool:
    """Whether this process can reset its resident-set high-water mark (Linux clear_refs).

    Without it (macOS, a hardened kernel) every RSS peak covers the whole process so far.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        _PROC_CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


PHASES = ("setup", "train", "eval")


class PhasedPeakMemory:
    """Peak memory of one run, kept apart per phase: ``setup``, ``train`` and ``eval``.

    Set-up (loading, tokenizing, a budget search's deep copies, a method's calibration pass
    such as fisher_mask's per-example gradients) and evaluation (batch ``eval_batch_size``)
    would otherwise set the "training" peak. Each switch of phase folds the high-water mark
    so far into the phase that was running and resets it (CUDA peak stats, Linux VmHWM), so a
    phase's figure is the highest reading over every interval it ran; a reset sets the mark
    to what is resident now, so what a phase inherits (the model's weights) counts in it.
    """

    def __init__(self, device: torch.device, phase: str = "setup") -> None:
        self.raw = PeakMemory(device)
        self.peaks: dict[str, dict] = {}
        self.current = phase
        self.resettable = rss_peak_resettable()
        self.raw.reset()

    def _fold(self) -> None:
        reading = self.raw.read()
        peak = self.peaks.setdefault(self.current, dict.fromkeys(reading))
        for key, value in reading.items():
            if value is not None:  # device_process is a "now" reading: its max over readings
                peak[key] = value if peak[key] is None else max(peak[key], value)

    def switch(self, phase: str) -> None:
        """Ends the running phase (its peak is kept) and starts ``phase`` from what is live."""
        self._fold()
        self.raw.reset()
        self.current = phase

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Books the block to phase ``name``, then goes back to the phase that was running."""
        previous = self.current
        self.switch(name)
        try:
            yield
        finally:
            self.switch(previous)

    def read(self, phase: str | None = None) -> dict:
        """The peak of ``phase`` (default: the running one) so far; nothing is reset."""
        self._fold()
        empty = dict.fromkeys(("allocated", "reserved", "rss", "device_process"))
        return dict(self.peaks.get(phase or self.current, empty))

    def summary(self) -> dict:
        """The record's ``peak_mem_bytes``: the training peak at the top level (what the
        tables read), and every phase apart."""
        self._fold()
        phases = {name: self.read(name) for name in PHASES}
        return {
            **phases["train"],
            **phases,
            # False: RSS peaks cover the whole process so far (earlier phases and runs)
            "rss_resettable": self.resettable,
        }


def nvml_process_bytes(device: torch.device) -> int | None:
    """This process's memory on ``device`` as the driver reports it, or None if unknown.

    Needs ``pynvml`` (the ``nvidia-ml-py`` package) and a driver; None without them, and
    inside a container whose PIDs the driver does not see.
    """
    try:
        import pynvml

        pynvml.nvmlInit()
        uuid = str(torch.cuda.get_device_properties(device).uuid)
        handle = pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}".encode())
        processes = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
    except Exception:  # no package, no driver, no such device: a missing reading, not an error
        return None
    used = [p.usedGpuMemory for p in processes if p.pid == os.getpid()]
    return used[0] if used and used[0] is not None else None


class AcceleratorBusy(RuntimeError):
    """The accelerator holds memory the starting run did not allocate (one-line message)."""


def ensure_idle(device: torch.device) -> None:
    """Refuses to start a run while tensors of an earlier run still occupy the device.

    Hydra's basic launcher runs every job of a sweep in one process: memory leaked by job k
    would inflate job k+1's peak and could push it out of memory.

    Raises:
        AcceleratorBusy: naming the amount and the fix.
    """
    if device.type != "cuda":
        return
    gc.collect()  # cycles (model <-> hooks) keep tensors alive until collected
    clear_workspaces = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear_workspaces is not None:  # cuBLAS keeps its workspace allocated between runs
        clear_workspaces()
    torch.cuda.empty_cache()
    held = torch.cuda.memory_allocated(device)
    if held > 0:
        driver = nvml_process_bytes(device)
        seen = f" (the driver sees {driver / 2**20:.0f} MiB for this process)" if driver else ""
        raise AcceleratorBusy(
            f"{device} already holds {held / 2**20:.1f} MiB of tensors this run did not "
            f"allocate{seen}; run each job in its own process (hydra/launcher=local) "
            "or free what the previous run left referenced"
        )


# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, by device-name substring.
# Checked in order, so more specific names come first. Override with instrument.peak_tflops.
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
]


def peak_tflops(device_name: str, override: float | None = None) -> float | None:
    """The device's peak for the MFU denominator, or None when unknown (e.g. CPUs)."""
    if override:
        return float(override)
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in device_name), None)


def forward_params(model: torch.nn.Module) -> int:
    """Parameters that take part in matrix multiplies: all but embedding tables (lookups)."""
    embedding = sum(
        p.numel()
        for m in model.modules()
        if isinstance(m, torch.nn.Embedding)
        for p in m.parameters(recurse=False)
    )
    return sum(p.numel() for p in model.parameters()) - embedding


def training_flops_per_token(n_forward: int, n_trainable: int) -> int:
    """Analytic training cost of one token (kept beside the measured figure, for reference).

    2N for the forward pass, 2N for the activation gradients of the backward pass, and 2N for
    weight gradients of *trainable* weights only: frozen weights need none. It misses what a
    parameter count cannot see: attention's sequence-length term, frozen buffers that are
    multiplied through (VeRA's random matrices), a tied LM head used twice, a decoder's
    tokens, and methods that run extra dense matmuls (FourierFT's Delta W).
    """
    return 4 * n_forward + 2 * n_trainable


def _fft_flops(transformed: int, points: int, factor: float) -> int:
    """``factor * N log2 n`` for ``N`` transformed values of ``n`` points each (5 for a complex
    FFT, the usual radix-2 count; 2.5 for a real one)."""
    return round(factor * transformed * math.log2(points)) if points > 1 else 0


def _fft_c2c_flop(self_shape, dim, *args, out_shape=None, **kwargs) -> int:
    return _fft_flops(math.prod(self_shape), math.prod(self_shape[d] for d in dim), 5.0)


def _fft_r2c_flop(self_shape, dim, *args, out_shape=None, **kwargs) -> int:
    return _fft_flops(math.prod(self_shape), math.prod(self_shape[d] for d in dim), 2.5)


def _fft_c2r_flop(self_shape, dim, *args, out_shape=None, **kwargs) -> int:
    return _fft_flops(math.prod(out_shape), math.prod(out_shape[d] for d in dim), 2.5)


def _sdpa_cpu_flop(query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


def _sdpa_cpu_backward_flop(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out, query, key, value)


def _extra_flop_formulas() -> dict:
    """What torch's counter leaves out but the methods here run: FFTs (FourierFT's inverse
    DFT, forward and backward) and the fused CPU attention kernel."""
    aten = torch.ops.aten
    formulas: dict = {
        aten._fft_c2c: _fft_c2c_flop,
        aten._fft_r2c: _fft_r2c_flop,
        aten._fft_c2r: _fft_c2r_flop,
    }
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        formulas[aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_cpu_flop
        formulas[aten._scaled_dot_product_flash_attention_for_cpu_backward] = (
            _sdpa_cpu_backward_flop
        )
    return formulas


def count_step_flops(
    model: torch.nn.Module,
    batch: dict,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
) -> dict:
    """Counts the FLOPs of one training step (forward + backward) on ``batch``, as run.

    The step is a real one (train mode, the run's autocast, dropout, gradient checkpointing's
    recomputation) executed under ``torch.utils.flop_counter.FlopCounterMode``, which counts
    every matrix multiply, attention kernel and (added here) FFT the dispatcher executes,
    frozen buffers and tied weights included; elementwise work is not counted (the usual MFU
    convention). It perturbs nothing: the RNG streams are forked and put back (the dropout
    masks it draws are not drawn from the run's streams), gradients are discarded and the
    ones that were there restored, no optimiser sees it.

    Returns:
        ``flops`` (the step's total), ``tokens`` (the batch's padded token count,
        ``input_ids.numel()``: the hardware computes on padding, and MFU's numerator counts
        the same tokens), ``flops_per_token`` and ``by_op`` (FLOPs per aten operator).
    """
    from torch.utils.flop_counter import FlopCounterMode

    grads = {p: p.grad for p in model.parameters()}
    was_training = model.training
    cuda = [device] if device.type == "cuda" else []
    counter = FlopCounterMode(display=False, custom_mapping=_extra_flop_formulas())
    try:
        with torch.random.fork_rng(devices=cuda), counter:
            model.train()
            with torch.autocast(
                device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None
            ):
                loss = model(**batch).loss
            loss.backward()
    finally:
        for param, grad in grads.items():
            param.grad = grad
        model.train(was_training)
    flops = counter.get_total_flops()
    tokens = batch["input_ids"].numel()
    by_op = counter.get_flop_counts().get("Global", {})
    return {
        "flops": flops,
        "tokens": tokens,
        "flops_per_token": flops / tokens,
        "by_op": {str(op).removeprefix("aten."): n for op, n in sorted(by_op.items(), key=str)},
    }


@torch.no_grad()
def inference_speed(model: torch.nn.Module, loader, device: torch.device) -> dict:
    """Forward-only latency per batch (p50/p90) and samples/s over a split."""
    was_training = model.training
    model.eval()
    durations, samples = [], 0
    # An encoder-decoder needs its labels (shifted into decoder inputs); others do without.
    keep_labels = getattr(model.config, "is_encoder_decoder", False)
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items() if k != "labels" or keep_labels}
        start = time.perf_counter()
        model(**batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        durations.append(time.perf_counter() - start)
        samples += len(batch["input_ids"])
    model.train(was_training)
    ordered = sorted(durations)
    return {
        "batch_latency_s": {"p50": _percentile(ordered, 50), "p90": _percentile(ordered, 90)},
        "samples_per_s": samples / sum(durations),
        "n_batches": len(durations),
    }


#: Linux powercap root; tests point it at a fake folder.
POWERCAP = Path("/sys/class/powercap")
RAPL_POLL_S = 10.0  # a package counter (~2^32 uJ) wraps after minutes at full load


def _rapl_packages(root: Path) -> list[Path]:
    """The package-level RAPL domains (``intel-rapl:N``; ``intel-rapl:N:M`` are inside them)."""
    return sorted(p for p in root.glob("intel-rapl:*") if p.name.count(":") == 1)


class EnergyMeter:
    """Energy the device drew over a block, from the driver's or the kernel's counter.

    CUDA: NVML's ``nvmlDeviceGetTotalEnergyConsumption`` (mJ since the driver loaded; Volta
    and later), read at start and stop. CPU: Linux RAPL, the sum of the package domains'
    ``energy_uj`` under ``/sys/class/powercap``, sampled every ``RAPL_POLL_S`` seconds by a
    background thread so a wrap of a counter (at ``max_energy_range_uj``) is seen and added
    back. Both count the whole device (GPU board, CPU packages), other processes included.
    ``exclude()`` blocks (evaluations inside training) are subtracted and reported apart.
    Where no counter can be read, ``summary`` gives null joules and ``why_null``.
    """

    def __init__(self, device: torch.device, root: Path | None = None) -> None:
        self.device = device
        self.root = root if root is not None else POWERCAP
        self.source: str | None = None
        self.why_null: str | None = None
        self.joules = 0.0
        self.excluded_joules = 0.0
        self._ranges: list[int] = []  # RAPL: each package's max_energy_range_uj
        self._last: list[int] | float | None = None
        self._read = self._open()
        self._lock = threading.Lock()
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    def _open(self):
        if self.device.type == "cuda":
            try:
                import pynvml

                pynvml.nvmlInit()
                uuid = str(torch.cuda.get_device_properties(self.device).uuid)
                handle = pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}".encode())
                pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            except Exception as error:  # no package, driver or support (pre-Volta)
                self.why_null = f"NVML total energy unreadable: {type(error).__name__}: {error}"
                return None
            self.source = "nvml"
            return lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0
        if self.device.type != "cpu":
            self.why_null = f"no energy counter known for device {self.device.type!r}"
            return None
        packages = _rapl_packages(self.root)
        if not packages:
            self.why_null = f"no RAPL package domain under {self.root} (not Linux on x86?)"
            return None
        try:
            self._ranges = [int((p / "max_energy_range_uj").read_text()) for p in packages]
            [int((p / "energy_uj").read_text()) for p in packages]
        except (OSError, ValueError) as error:
            self.why_null = (
                f"RAPL unreadable ({type(error).__name__}: {error}); energy_uj is root-only "
                "since Linux 5.10: run as root or make it readable"
            )
            return None
        self.source = "rapl"
        return lambda: [int((p / "energy_uj").read_text()) for p in packages]

    def _delta(self, now: list[int] | float) -> float:
        """Joules since the last reading (RAPL: each package, a wrap added back)."""
        last, self._last = self._last, now
        if last is None:
            return 0.0
        if self.source == "nvml":
            return float(now) - float(last)
        total = 0
        for before, after, span in zip(last, now, self._ranges, strict=True):
            total += after - before if after >= before else after + span - before
        return total / 1e6

    def sample(self) -> float:
        """Reads the counter; returns the joules since the previous reading."""
        return self._delta(self._read()) if self._read is not None else 0.0

    def start(self) -> None:
        if self._read is None:
            return
        self.sample()
        if self.source == "rapl":
            self._stop = threading.Event()

            def poll() -> None:
                while not self._stop.wait(RAPL_POLL_S):
                    with self._lock:
                        self.joules += self.sample()

            self._thread = threading.Thread(target=poll, name="rapl-poll", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._read is None:
            return
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        with self._lock:
            self.joules += self.sample()

    @contextmanager
    def measure(self) -> Iterator[None]:
        self.start()
        try:
            yield
        finally:
            self.stop()

    @contextmanager
    def exclude(self) -> Iterator[None]:
        """A block inside ``measure`` whose energy is booked apart (an evaluation)."""
        if self._read is None or self._last is None:
            yield
            return
        with self._lock:
            self.joules += self.sample()
        try:
            yield
        finally:
            with self._lock:
                self.excluded_joules += self.sample()

    def summary(self, tokens: int) -> dict:
        """The record's ``cost.energy``: joules of the measured blocks less the excluded ones,
        per padded token (the tokens the FLOPs count), and where the figure came from."""
        if self._read is None:
            return {
                "joules": None,
                "joules_per_token": None,
                "excluded_joules": None,
                "source": None,
                "why_null": self.why_null,
            }
        return {
            "joules": self.joules,
            "joules_per_token": self.joules / tokens if tokens else None,
            "excluded_joules": self.excluded_joules,  # evaluations inside training
            "source": self.source,
            "why_null": None if tokens else "no training token counted",
        }

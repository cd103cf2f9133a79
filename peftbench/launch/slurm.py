"""The ``slurm`` preset's launcher: Hydra's submitit launcher, made to finish its sweep (issue 37).

Hydra's launcher (hydra-submitit-launcher 1.2.0, ``submitit_launcher.py``, ``launch``) ends with
``[j.results()[0] for j in jobs]``: the first job that ended without a result (a run stopped by
a signal, an input error found inside the job: both ``SystemExit``) raises submitit's
``UncompletedJobError`` in the launching process, about a minute later (sacct's polling), and
the sweep dies without its report. :class:`SweepSurvivor` changes both sides:

* In the job (``__call__``): a ``SystemExit`` out of the run becomes a result, so every job
  leaves a result file and the launcher sees it within a second. A run stopped by SLURM's
  pre-timeout warning (``USR2``, the preset's ``--signal=USR2@120``, or ``scancel
  --signal=USR2``) has already written its checkpoint and ``interrupted`` record; the signal
  is then handed back to submitit's own handler (``job_environment.py``,
  ``SignalHandler.checkpoint_and_try_requeue``), which pickles the same call again (Hydra's
  launcher defines ``checkpoint``) and runs ``scontrol requeue``, at most ``max_num_timeout``
  times for timeouts; the requeued job resumes the run from its checkpoint.
* In the launching process (``launch``): the jobs run the launching checkout's code; a
  ``timeout_min`` that leaves no time before the warning and sbatch's refusals (a GPU request
  on a CPU partition...) end the command with one line; each job's outcome is printed as it
  ends; no job's failure raises. The outcomes go to :class:`ReportAtSweepEnd`, which writes the
  report, then a summary of every job with the command that resumes, and exits non-zero
  unless every run succeeded.

Only submitit's public API is used (``AutoExecutor``, ``Job.done/results/state/stderr``,
``JobEnvironment().paths``), and its signal handler only through the signal itself.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
import re
import shlex
import signal
import time
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus

from peftbench.errors import exit_with
from peftbench.launch.callbacks import DONE

log = logging.getLogger("peftbench")

#: SLURM job states of a job that was stopped rather than broken.
STOPPED_STATES = ("CANCELLED", "TIMEOUT", "PREEMPTED", "DEADLINE")
#: Top-level packages a job imports: they must come from the launching checkout.
CODE_PACKAGES = ("peftbench", "tasks", "analysis", "hydra_plugins.peftbench_launcher")
POLL_S = 2.0


class SweepSurvivor:
    """Mixed into Hydra's submitit launcher (hydra_plugins/peftbench_launcher/slurm.py).

    ``self.params`` is the resolved ``hydra.launcher`` config, as Hydra's launcher keeps it.
    """

    params: dict

    # ------------------------------------------------------------------ in the job

    def __call__(self, sweep_overrides: list[str], *args: Any, **kwargs: Any) -> JobReturn:
        """Runs one job of the sweep; a ``SystemExit`` out of it becomes a result."""
        try:
            return super().__call__(sweep_overrides, *args, **kwargs)  # type: ignore[misc]
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
            outcome = _ended_outcome(code)
            if code == 128 + signal.SIGUSR2:  # SLURM's warning: requeue, unless submitit won't
                outcome["error"] = f"not requeued: {_requeue()}; {outcome['error']}"
            return _returned(sweep_overrides, outcome)

    # ------------------------------------------------------------------ launching

    def launch(self, job_overrides: Any, initial_job_idx: int) -> list[JobReturn]:
        """Submits the sweep as one job array, waits for every job and returns its outcome.

        Never raises for a job: each becomes a result whose value is the run's summary, or an
        outcome dict for a job that ended without one (see :func:`describe`).
        """
        from hydra.core.singleton import Singleton

        from peftbench.launch.callbacks import note_outcomes, sweep_total

        check_timeout(self.params)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))  # type: ignore[attr-defined]
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:  # type: ignore[attr-defined]
            os.chmod(sweep_dir, int(str(self.config.hydra.sweep.mode), 8))  # type: ignore
        executor = make_executor(self.params)
        log.info("slurm sweep of %d jobs; output dir %s", len(job_overrides), sweep_dir)
        numbers = [initial_job_idx + k for k in range(len(job_overrides))]
        calls = [  # what Hydra's launcher passes each job's __call__
            (list(overrides), "hydra.sweep.dir", n, f"job_id_for_{n}")
            for n, overrides in zip(numbers, job_overrides, strict=True)
        ]
        state = Singleton.get_state()
        jobs = submit(executor, self, [(*call, state) for call in calls])
        outcomes = wait_for(jobs, [n + 1 for n in numbers], sweep_total() or str(len(jobs)))
        pairs = zip(outcomes, calls, strict=True)
        returns = [_returned(c[0], o, keep=o.pop("_return", None)) for o, c in pairs]
        note_outcomes(outcomes)
        return returns


# ---------------------------------------------------------------------- the job's side


def _ended_outcome(code: int) -> dict:
    """What a job whose run exited (``SystemExit``) says: the run's last line on stderr."""
    line = _last_message(_job_stderr())
    match = re.match(r"peftbench: (\S+--\S+): ", line)  # "<run_id>: interrupted by ..."
    return {
        "status": "interrupted" if code > 128 else "failed",
        "run_id": match.group(1) if match else None,
        "error": (line[match.end() :] if match else line) or f"exit code {code}",
        "exit_code": code,
    }


def _job_stderr() -> str:
    import submitit

    try:
        return Path(submitit.JobEnvironment().paths.stderr).read_text(errors="replace")
    except (OSError, RuntimeError, KeyError):  # not under submitit, or no log yet
        return ""


def _last_message(text: str | None) -> str:
    """The last ``peftbench:`` line of a log (else its last line), on one line."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith("peftbench: ")]
    return (ours or lines or [""])[-1][:500]


def _requeue() -> str:
    """Hands SLURM's USR2 back to submitit's handler, which requeues the job and exits.

    Returns:
        Why the job was not requeued (the handler returned or refused).
    """
    handler = signal.getsignal(signal.SIGUSR2)
    if not callable(handler):
        return "no submitit signal handler in this process"
    try:
        signal.raise_signal(signal.SIGUSR2)  # requeues, then sys.exit(-1): the job ends here
    except Exception as refused:  # submitit's UncompletedJobError: "timed-out too many times"
        return str(refused).removeprefix("Job not requeued because: ").rstrip(".")
    return "the handler returned without requeuing"


def _returned(overrides: list[str], value: Any, keep: JobReturn | None = None) -> JobReturn:
    """A completed JobReturn holding ``value`` (or ``keep``, the job's own, as it is)."""
    if keep is not None:
        return keep
    ret = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
    ret.return_value = value
    return ret


# ---------------------------------------------------------------------- the launcher's side


def check_timeout(params: dict) -> None:
    """Refuses a time limit that leaves a run no time before SLURM's warning signal."""
    timeout_min, delay_s = params.get("timeout_min"), int(params.get("signal_delay_s") or 0)
    if timeout_min is not None and int(timeout_min) * 60 <= delay_s:
        exit_with(
            f"hydra.launcher.timeout_min={timeout_min} leaves no time before SLURM's warning "
            f"(sent hydra.launcher.signal_delay_s={delay_s} s before the limit), so every run "
            f"would stop as it starts; use timeout_min above {delay_s // 60} (a run trains "
            f"for timeout_min minus {delay_s} s), or lower signal_delay_s"
        )


def code_roots() -> list[str]:
    """The folders the launching process imports peftbench (and tasks, analysis) from."""
    roots: list[str] = []
    for name in CODE_PACKAGES:
        try:
            spec = importlib.util.find_spec(name)
        except ModuleNotFoundError:
            continue
        if spec is None or not spec.submodule_search_locations:
            continue
        depth = name.count(".") + 1
        root = str(Path(list(spec.submodule_search_locations)[0]).resolve().parents[depth - 1])
        if root not in roots:
            roots.append(root)
    return roots


def job_setup(user_setup: list[str] | None) -> list[str]:
    """The sbatch script's setup lines: the user's, then what every job needs.

    * ``SLURM_EXPORT_ENV=ALL``: on a cluster that does not export the environment
      (``--export=NONE``, ``SBATCH_EXPORT=NONE``), ``srun`` would start the job without the
      variables the script sets, and submitit cannot tell where it runs.
    * ``PYTHONPATH`` = the launching checkout, and ``PYTHONSAFEPATH=1`` (Python >= 3.11) so
      that the submission folder (``python -m`` puts it first) cannot shadow it: the jobs run
      the code of the checkout that launched them, whatever folder the sweep started from.
    """
    path = ":".join(shlex.quote(root) for root in code_roots())
    return [
        *(user_setup or []),
        "# peftbench: the launching checkout's code, and srun passes this environment on",
        "export SLURM_EXPORT_ENV=ALL",
        "export PYTHONSAFEPATH=1",
        f"export PYTHONPATH={path}${{PYTHONPATH:+:$PYTHONPATH}}",
    ]


def make_executor(launcher: dict) -> Any:
    """submitit's executor for the launcher config, as Hydra's launcher builds it.

    Generic keys as they are, the others prefixed ``slurm_``; plus :func:`job_setup`.
    """
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    params = {k: v for k, v in launcher.items() if k != "_target_"}
    executor = submitit.AutoExecutor(
        cluster="slurm",
        folder=params.pop("submitit_folder"),
        slurm_max_num_timeout=int(params.pop("max_num_timeout", 0) or 0),
    )
    params["setup"] = job_setup(params.get("setup"))
    generic = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(
        **{k if k in generic else f"slurm_{k}": v for k, v in params.items()}
    )
    return executor


def submit(executor: Any, function: Any, calls: list[tuple]) -> list[Any]:
    """Submits one array job; sbatch's refusal ends the command with its one line."""
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    printed = io.StringIO()  # submitit prints sbatch's stderr before raising: said once, below
    try:
        with contextlib.redirect_stderr(printed):
            return executor.map_array(function, *zip(*calls, strict=True))
    except (FailedJobError, FailedSubmissionError) as refused:
        exit_with(sbatch_refusal(str(refused) or printed.getvalue()))


def sbatch_refusal(stderr: str) -> str:
    """sbatch's error, and what to change, in one line."""
    said = _last_message(stderr.replace("sbatch: error: ", "peftbench: "))
    said = said.removeprefix("peftbench: ") or "no message"
    fix = (
        "check hydra.launcher.partition, account, qos and the resources against `sinfo -s` "
        "and your cluster's limits (docs/SLURM.md)"
    )
    if "generic resource" in said.lower() or "gres" in said.lower():
        fix = (
            "this partition has no GPUs of that kind: on a CPU partition add "
            "hydra.launcher.gpus_per_node=0 (docs/SLURM.md, 'A CPU partition')"
        )
    return f"sbatch refused the sweep's job array: {said}; {fix}"


def wait_for(jobs: list[Any], numbers: list[int], total: str) -> list[dict]:
    """Waits for every job, printing each one's outcome as it ends (in any order)."""
    outcomes: list[dict | None] = [None] * len(jobs)
    pending = list(range(len(jobs)))
    while pending:
        for k in [k for k in pending if jobs[k].done()]:
            pending.remove(k)
            outcomes[k] = {"job": numbers[k], **describe(jobs[k])}
            print(progress_line(numbers[k], total, outcomes[k]), flush=True)
        if pending:
            time.sleep(POLL_S)
    return [o for o in outcomes if o is not None]


def describe(job: Any) -> dict:
    """A finished job's outcome: status, run_id, error (one line), slurm id.

    ``_return`` keeps the job's own JobReturn when it completed with a value, so the sweeper
    (Optuna's wants the objective) gets it unchanged.
    """
    outcome: dict = {"slurm_id": job.job_id, "run_id": None, "error": None}
    try:
        ret = job.results()[0]
    except Exception as error:  # no result: the job was killed, cancelled, out of memory...
        state = str(job.state)
        stopped = state.upper().startswith(STOPPED_STATES)
        said = _last_message(job.stderr()) or _last_message(str(error))
        return {
            **outcome,
            "status": "interrupted" if stopped else "failed",
            "error": f"SLURM state {state}: {said}",
        }
    if ret.status != JobStatus.COMPLETED:  # the run raised out of run(): a bug, said in a line
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # Hydra writes a line as it raises
                ret.return_value  # noqa: B018
        except Exception as error:
            return {**outcome, "status": "failed", "error": f"{type(error).__name__}: {error}"}
    value = ret.return_value
    if isinstance(value, dict) and "status" in value:
        return {**outcome, **_summary_outcome(value), "_return": ret}
    return {**outcome, "status": "success", "run_id": f"objective {value}", "_return": ret}


def _summary_outcome(summary: dict) -> dict:
    """Status, run id and error of a run's summary (the error read from its record)."""
    outcome = {k: summary.get(k) for k in ("status", "run_id", "error")}
    if outcome["status"] not in DONE and not outcome["error"] and summary.get("path"):
        with contextlib.suppress(OSError, ValueError):
            outcome["error"] = json.loads(Path(summary["path"]).read_text()).get("error")
    return outcome


def progress_line(number: int, total: str, outcome: dict) -> str:
    """``[sweep] job k/N status: run_id (error)``, as the console shows it."""
    line = f"[sweep] job {number}/{total} {outcome['status']}: {outcome.get('run_id') or '-'}"
    if outcome.get("error"):
        line += f" ({' '.join(str(outcome['error']).split())[:400]})"
    return f"{line} [slurm {outcome['slurm_id']}]"

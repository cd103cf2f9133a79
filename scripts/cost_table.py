"""The GPU cost table: six methods on ``llama-1b-synthetic`` x ``synthetic-1024``, bf16.

    python scripts/cost_table.py run --out DIR --tokenizer CARRY/smollm2-tokenizer
    python scripts/cost_table.py render --out DIR [--write docs/PERFORMANCE.md]

``run`` trains each method for a few steps through the normal experiment path (``peftbench
.experiment.run``: same loop, instrumentation and records; one process, as Hydra's basic
launcher runs a sweep), then measures the harness/bare-loop ratio of LoRA with ``peftbench
bench overhead``'s own function, and writes ``DIR/records/``, ``DIR/overhead.json`` and
``DIR/cost_table.{md,json}``. ``render`` rebuilds the table from those files and, with
``--write``, fills the generated part of ``docs/PERFORMANCE.md``.

Record keys are read defensively: FLOPs per token and MFU from ``cost.flops_per_token`` /
``cost.mfu`` (a number, or a dict with a ``measured`` or ``total`` entry), peak memory from
``cost.peak_mem_bytes`` either flat (``allocated``/``reserved``) or split into parts
(``setup``/``train``/``eval``, each with ``allocated``/``reserved``: the largest part counts).
A key that is missing shows as ``n/a``, never as a number.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("full", "lora", "dora", "ia3", "prefix", "adapter")
GOAL_MFU, GOAL_OVERHEAD = 0.40, 1.05
BEGIN, END = "<!-- cost-table:begin -->", "<!-- cost-table:end -->"
#: A Llama small enough for a CPU smoke test (same code path; figures meaningless).
TINY = [
    "model.architecture.hidden_size=64",
    "model.architecture.intermediate_size=128",
    "model.architecture.num_hidden_layers=2",
    "model.architecture.num_attention_heads=4",
    "model.architecture.num_key_value_heads=2",
    "model.architecture.head_dim=16",
    "model.architecture.vocab_size=1024",
    "task.source.vocab_size=1024",
    "task.max_length=128",
]


def overrides(args: argparse.Namespace, method: str, results: Path) -> list[str]:
    """One cell's config: the synthetic task and model, bf16, a short fixed schedule."""
    tokenizer = []  # None: the model config's own (SmolLM2's GGUF asset)
    if args.tokenizer:
        path = Path(args.tokenizer).resolve()
        tokenizer = ["model.source.asset=null", "model.source.gguf_file=null"]
        tokenizer.append(f"model.source.path={path}")
    return [
        "task=synthetic-1024",
        "model=llama-1b-synthetic",
        f"method={method}",
        *tokenizer,
        *(TINY if args.tiny else []),
        f"device={args.device}",
        f"train.precision={args.precision}",
        f"train.batch_size={args.batch_size}",
        f"train.max_steps={args.steps}",
        f"train.eval_every_steps={args.steps}",
        "train.eval_batch_size=4",  # logits of 4 x 1,024 x 128,256 fit; 128 rows would not
        f"train.warmup_steps_excluded={args.warmup}",
        "train.log_every_steps=5",
        "train.checkpoint_every_steps=0",
        "instrument.inference=false",
        "tracker=none",
        "data_cache=false",
        "force=true",
        f"results_dir={results}",
    ]


def cmd_run(args: argparse.Namespace) -> int:
    from peftbench.measure.overhead import compose, overhead
    from peftbench.runner.experiment import run

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    status = 0
    for method in args.methods.split(","):
        start = time.perf_counter()
        try:
            summary = run(compose(overrides(args, method, out)))
        except Exception as error:  # a bad config raises before any record: note it, go on
            summary = {"status": "error", "error": f"{type(error).__name__}: {error}"}
        print(f"cost: {method}: {summary.get('status')} in {time.perf_counter() - start:.0f}s")
        status = status or int(summary.get("status") != "success")
        _free_cuda()
    if args.overhead_repeats > 0:
        start = time.perf_counter()
        cell = overrides(args, "lora", out / "overhead-tmp")
        skip = ("train.max_steps", "train.eval_every", "force")  # overhead() sets its own
        cell = [o for o in cell if not o.startswith(skip)]
        try:
            result = overhead(cell, steps=args.overhead_steps, repeats=args.overhead_repeats)
        except Exception as error:
            result = {"error": f"{type(error).__name__}: {error}"}
            status = 1
        (out / "overhead.json").write_text(json.dumps(result, indent=1, default=str))
        took = time.perf_counter() - start
        print(f"cost: overhead: {result.get('ratios', result)} in {took:.0f}s")
        _free_cuda()
    write_outputs(out, command=" ".join(sys.argv))
    return status


def _free_cuda() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- reading records defensively ------------------------------------------------------------
def _get(tree: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _number(value: Any, *prefer: str) -> float | None:
    """A number, or the first numeric entry of a dict among ``prefer``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, dict):
        for key in prefer:
            found = _number(value.get(key))
            if found is not None:
                return found
    return None


def peak_memory(cost: dict) -> tuple[float | None, float | None]:
    """(allocated, reserved) peak bytes: flat, or the largest of the per-phase parts."""
    peak = cost.get("peak_mem_bytes") or cost.get("peak_memory") or {}
    if not isinstance(peak, dict):
        return None, None
    flat = _number(peak.get("allocated")), _number(peak.get("reserved"))
    if flat != (None, None):
        return flat
    parts = [v for v in peak.values() if isinstance(v, dict)]
    pick = [[_number(p.get(k)) for p in parts] for k in ("allocated", "reserved")]
    return tuple(max((x for x in xs if x is not None), default=None) for xs in pick)


def row(record: dict) -> dict:
    cost = record.get("cost") or {}
    allocated, reserved = peak_memory(cost)
    step = cost.get("step_time_s") or {}
    return {
        "method": _get(record, "experiment", "method"),
        "status": record.get("status"),
        "error": record.get("error"),
        "trainable_pct": _number(_get(record, "params", "trainable_pct")),
        "step_p50_s": _number(step.get("p50")),
        "steps_measured": step.get("n"),
        "tokens_per_s": _number(cost.get("tokens_per_s")),
        "flops_per_token": _number(cost.get("flops_per_token"), "measured", "total", "value"),
        "flops_source": (cost.get("flops_source") or cost.get("flops_method")
                         or ("analytic" if isinstance(cost.get("flops_per_token"), int) else None)),
        "achieved_tflops": _number(cost.get("achieved_tflops"), "measured", "total"),
        "mfu": _number(cost.get("mfu"), "measured", "total", "value"),
        "peak_allocated": allocated,
        "peak_reserved": reserved,
    }  # fmt: skip


def read_records(folder: Path) -> list[dict]:
    """The newest record per method, in the table's method order."""
    newest: dict[str, dict] = {}
    for path in sorted((folder / "records").glob("*.json")):
        record = json.loads(path.read_text())
        method = _get(record, "experiment", "method")
        if method and record.get("created_at", "") >= newest.get(method, {}).get("created_at", ""):
            newest[method] = record
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(newest.values(), key=lambda r: order.get(r["experiment"]["method"], 99))


# -- rendering ----------------------------------------------------------------------------
def _fmt(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "n/a" if value is None else format(value * scale, spec)


def render(folder: Path, command: str | None = None) -> tuple[str, dict]:
    """The Markdown of the cost table (with device, versions, command and goals) and its data."""
    records = read_records(folder)
    rows = [row(r) for r in records]
    overhead = {}
    if (folder / "overhead.json").is_file():
        overhead = json.loads((folder / "overhead.json").read_text())
    env = next((r.get("env") for r in records if r.get("env")), {}) or {}
    lines = [
        f"Device: **{env.get('gpu') or env.get('device') or 'unknown'}**; python "
        f"{env.get('python', '?')}, torch {env.get('torch', '?')}, transformers "
        f"{env.get('transformers', '?')}, peft {env.get('peft', '?')}; "
        f"git {_get(records[0], 'code', 'git_sha') if records else '?'}.",
        "",
        f"Command: `{command or 'scripts/gpu_check.sh'}`",
        "",
        "| method | status | % trainable | step p50 (ms) | tokens/s | FLOPs/token (G) "
        "| TFLOP/s | MFU | peak alloc (GiB) | peak reserved (GiB) |",
        "| :-- | :-- | --: | --: | --: | --: | --: | --: | --: | --: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['status']} | {_fmt(r['trainable_pct'], '.3g')} "
            f"| {_fmt(r['step_p50_s'], '.1f', 1e3)} | {_fmt(r['tokens_per_s'], ',.0f')} "
            f"| {_fmt(r['flops_per_token'], '.3g', 1e-9)} | {_fmt(r['achieved_tflops'], '.1f')} "
            f"| {_fmt(r['mfu'], '.1%')} | {_fmt(r['peak_allocated'], '.2f', 2**-30)} "
            f"| {_fmt(r['peak_reserved'], '.2f', 2**-30)} |"
        )
    sources = sorted({r["flops_source"] for r in rows if r["flops_source"]})
    lines += ["", f"FLOPs counted: {', '.join(sources) or 'as the records give them'}."]
    failed = [r for r in rows if r["status"] != "success"]
    lines += [f"- {r['method']}: {r['status']}: {r['error']}" for r in failed]
    ratios = overhead.get("ratios") or {}
    if ratios:
        lines += [
            "",
            f"Harness/bare loop (LoRA, {overhead.get('repeats')} interleaved repeats of "
            f"{overhead.get('steps')} steps; medians): "
            + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()),
        ]
    elif overhead.get("error"):
        lines += ["", f"Harness/bare loop: failed: {overhead['error']}"]
    lora = next((r for r in rows if r["method"] == "lora" and r["status"] == "success"), None)
    mfu = lora and lora["mfu"]
    ratio = ratios.get("step_p50_s")
    goals = {
        "lora_mfu": mfu,
        "lora_mfu_met": None if mfu is None else mfu >= GOAL_MFU,
        "overhead_step_p50": ratio,
        "overhead_met": None if ratio is None else ratio <= GOAL_OVERHEAD,
    }
    verdict = {None: "not measured", True: "met", False: "NOT met"}
    if not env.get("gpu"):  # a CPU smoke run: its figures say nothing about the goals
        goals = {**goals, "lora_mfu_met": None, "overhead_met": None}
        verdict[None] = "not judged (no GPU)"
    lines += [
        "",
        f"Goals: LoRA MFU >= {GOAL_MFU:.0%}: {verdict[goals['lora_mfu_met']]}"
        f" ({_fmt(mfu, '.1%')}); harness/bare step time <= {GOAL_OVERHEAD}: "
        f"{verdict[goals['overhead_met']]} ({_fmt(ratio, '.3f')}).",
    ]
    return "\n".join(lines) + "\n", {"rows": rows, "overhead": overhead, "goals": goals, "env": env}


def write_outputs(folder: Path, command: str | None = None) -> str:
    text, data = render(folder, command)
    (folder / "cost_table.md").write_text(text)
    (folder / "cost_table.json").write_text(json.dumps(data, indent=1, default=str))
    return text


def fill_doc(doc: Path, generated: str) -> None:
    """Replaces what lies between the cost-table markers of ``doc`` with ``generated``."""
    text = doc.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"cost_table: {doc} has no {BEGIN} ... {END} markers to fill")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{BEGIN}\n{generated.rstrip()}\n{END}{tail}")


def cmd_render(args: argparse.Namespace) -> int:
    folder = Path(args.out)
    cost = folder / "cost" if (folder / "cost" / "records").is_dir() else folder
    command = args.command
    if command is None and (cost / "command.txt").is_file():
        command = (cost / "command.txt").read_text().strip()
    text = write_outputs(cost, command)
    parts = [text]
    compare = folder / "sweep_compare.md"
    if compare.is_file():
        parts += ["\n### Real weights: GPU vs CPU records\n", compare.read_text()]
    if args.write:
        fill_doc(Path(args.write), "\n".join(parts))
        print(f"cost_table: filled {args.write}")
    else:
        print("\n".join(parts))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(required=True)
    run = sub.add_parser("run", help="train the cells and measure the overhead")
    run.add_argument("--out", required=True)
    run.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the asset)")
    run.add_argument("--methods", default=",".join(METHODS))
    run.add_argument("--device", default="auto")
    run.add_argument("--precision", default="bf16")
    run.add_argument("--batch-size", type=int, default=16, help="sequences of 1,024 per step")
    run.add_argument("--steps", type=int, default=20)
    run.add_argument("--warmup", type=int, default=5, help="steps left out of the statistics")
    run.add_argument("--overhead-steps", type=int, default=20)
    run.add_argument("--overhead-repeats", type=int, default=2, help="0 = skip")
    run.add_argument("--tiny", action="store_true", help="a tiny Llama (CPU smoke test)")
    run.set_defaults(handler=cmd_run)
    show = sub.add_parser("render", help="rebuild the table; --write fills PERFORMANCE.md")
    show.add_argument("--out", required=True, help="the cost folder or the gpu_check output")
    show.add_argument("--write", default=None, metavar="DOC")
    show.add_argument("--command", default=None, help="the command to quote")
    show.set_defaults(handler=cmd_render)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())

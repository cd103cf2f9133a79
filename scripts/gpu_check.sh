#!/usr/bin/env bash
# The GPU check (issue 19): one script, one output folder, at most ~8 minutes on one GPU.
#
#   scripts/gpu_check.sh              on the GPU machine (needs the carry folder, see below)
#   scripts/gpu_check.sh --cpu-smoke  here, on CPU: the same steps on tiny models (~2 min)
#
# Steps, each with its own time limit, each logged to $OUT/logs/<step>.log:
#   probe    nvidia-smi, the Python, the packages it has (torch, transformers, peft, ...);
#            stops with one line naming what is missing (nothing can be installed offline)
#   install  pip install --no-deps --no-build-isolation --no-index -e . into that Python
#            (if that fails the steps still run from the source tree, PYTHONPATH=.)
#   pytest   python -m pytest -m gpu tests/
#   sweep    lora, prefix, adapter on polarity with MiniLM's real weights (carried), bf16,
#            the recipe of docs/reports/offline-sweep-2026-11-23/all-methods-polarity.md,
#            then scripts/sweep_compare.py puts the scores next to those CPU records
#   cost     scripts/cost_table.py run: full, lora, dora, ia3, prefix, adapter on
#            llama-1b-synthetic x synthetic-1024, bf16, plus the harness/bare-loop ratio
#   render   $OUT/PERFORMANCE.md: docs/PERFORMANCE.md filled with the figures
#
# Output: $OUT (the device tool sets it; default ./gpu-check-out): summary.json (every step's
# exit status and seconds), gpu_check.log, logs/, probe.json, nvidia-smi.txt, pip-freeze.txt,
# sweep/records/, sweep_compare.md, cost/records/, cost/overhead.json, cost/cost_table.{md,json},
# PERFORMANCE.md. Copy that last one to docs/PERFORMANCE.md (or re-render: see its header).
#
# Environment: GPU_CHECK_PYTHON (default python3), GPU_CHECK_CARRY (default .cache/gpu-carry,
# built here by `python scripts/carry.py`), GPU_CHECK_BUDGET_S (default 470: the whole script),
# GPU_CHECK_BATCH (cost table sequences per step, default 16), GPU_CHECK_STEPS (default 20).
# Wheels in $GPU_CHECK_CARRY/wheels/ (scripts/carry.py --wheels-from DIR) are installed first.
set -u -o pipefail

MODE=gpu
case "${1:-}" in
  --cpu-smoke) MODE=cpu ;;
  "") ;;
  *) echo "gpu_check: error: unknown argument ${1}; use --cpu-smoke or nothing" >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${OUT:-$REPO/gpu-check-out}
mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
PY=${GPU_CHECK_PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-470}
BATCH=${GPU_CHECK_BATCH:-16}
STEPS=${GPU_CHECK_STEPS:-20}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
  WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 \
  PIP_BREAK_SYSTEM_PACKAGES=1  # a throwaway machine's system Python may be "externally managed"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1

START=$SECONDS
STEPS_JSON=""
FAILED=0

say() { echo "gpu_check: $*"; }

# step NAME LIMIT_S REQUIRED COMMAND...: runs COMMAND under min(LIMIT_S, what is left)
step() {
  local name=$1 limit=$2 required=$3
  shift 3
  local left=$((BUDGET - (SECONDS - START)))
  ((limit > left)) && limit=$left
  if ((limit < 5)); then
    say "$name: skipped, the ${BUDGET}s budget is spent"
    STEPS_JSON+="{\"step\": \"$name\", \"rc\": null, \"seconds\": 0, \"skipped\": true},"
    ((required)) && FAILED=1
    return 0
  fi
  say "$name: start (limit ${limit}s)"
  local t0=$SECONDS rc
  # SIGINT first: a run in progress then writes its `cancelled` record
  timeout -s INT -k 15 "$limit" "$@" > >(tee "$OUT/logs/$name.log") 2>&1
  rc=$?
  local took=$((SECONDS - t0))
  ((rc == 124)) && say "$name: TIMED OUT after ${took}s" || say "$name: rc=$rc in ${took}s"
  STEPS_JSON+="{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $took, \"required\": $required},"
  ((rc != 0 && required)) && FAILED=1
  return 0
}

finish() {
  printf '{"mode": "%s", "out": "%s", "seconds": %d, "ok": %s, "steps": [%s]}\n' \
    "$MODE" "$OUT" $((SECONDS - START)) "$([ $FAILED = 0 ] && echo true || echo false)" \
    "${STEPS_JSON%,}" >"$OUT/summary.json"
  say "done in $((SECONDS - START))s: $([ $FAILED = 0 ] && echo ok || echo FAILED); $OUT/summary.json"
  exit $((FAILED ? 1 : 0))
}

# -- probe ----------------------------------------------------------------------------------
say "mode $MODE, output $OUT, python $(command -v "$PY" || echo "$PY: not found")"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | sed 's/^/gpu_check: gpu: /'
else
  echo "nvidia-smi: not found" >"$OUT/nvidia-smi.txt"
  say "nvidia-smi: not found"
fi
if ! command -v "$PY" >/dev/null; then
  say "error: no Python ($PY); set GPU_CHECK_PYTHON to one that has torch, transformers and peft"
  FAILED=1 && finish
fi
WHEELS=${GPU_CHECK_CARRY:-$REPO/.cache/gpu-carry}/wheels
if [ "$MODE" = gpu ] && [ -d "$WHEELS" ]; then  # carried for packages this Python lacks
  say "installing the carried wheels: $(ls "$WHEELS" | tr '\n' ' ')"
  "$PY" -m pip install --no-index --no-deps --no-build-isolation -q "$WHEELS"/* \
    || say "warning: the carried wheels did not all install (the probe says what is missing)"
fi
"$PY" -m pip list --format=freeze >"$OUT/pip-freeze.txt" 2>/dev/null || true
"$PY" - "$OUT/probe.json" "$MODE" <<'EOF'
import importlib, json, platform, sys
required = ["torch", "transformers", "peft", "safetensors", "tokenizers", "accelerate",
            "hydra", "omegaconf", "numpy", "sklearn", "tqdm", "psutil"]
optional = ["scipy", "pandas", "matplotlib", "pynvml", "pytest", "wandb", "seqeval", "sacrebleu"]
found = {}
for name in required + optional:
    try:
        found[name] = getattr(importlib.import_module(name), "__version__", "present")
    except Exception as error:  # missing, or broken (an ABI mismatch): both unusable
        found[name] = None
        if name in required:
            print(f"gpu_check: probe: {name}: {type(error).__name__}: {error}")
info = {"python": platform.python_version(), "executable": sys.executable, "packages": found}
if found["torch"]:
    import torch
    info["cuda"] = {"available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda,
                    "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}
json.dump(info, open(sys.argv[1], "w"), indent=1)
print("gpu_check: probe: python", info["python"], "|", ", ".join(
    f"{k} {v}" for k, v in found.items() if v), "|", info.get("cuda"))
missing = [k for k in required if not found[k]]
if missing:
    print(f"gpu_check: error: {sys.executable} lacks {', '.join(missing)} (the machine is offline, "
          "nothing can be installed); use a Python that has them (GPU_CHECK_PYTHON)")
    sys.exit(3)
if sys.argv[2] == "gpu" and not info["cuda"]["available"]:
    print(f"gpu_check: error: torch {found['torch']} sees no CUDA device "
          f"(built for CUDA {info['cuda']['torch_cuda']}); nvidia-smi output is in nvidia-smi.txt")
    sys.exit(3)
EOF
rc=$?
STEPS_JSON+="{\"step\": \"probe\", \"rc\": $rc, \"seconds\": $((SECONDS - START)), \"required\": 1},"
if ((rc != 0)); then FAILED=1 && finish; fi

# -- carry folder ---------------------------------------------------------------------------
if [ "$MODE" = cpu ]; then
  CARRY=$OUT/carry-tiny
  "$PY" scripts/carry.py --tiny --out "$CARRY" || { say "error: could not build $CARRY"; FAILED=1; finish; }
  DEVICE=cpu
else
  CARRY=$(cd "${GPU_CHECK_CARRY:-$REPO/.cache/gpu-carry}" 2>/dev/null && pwd) || {
    say "error: no carry folder ${GPU_CHECK_CARRY:-.cache/gpu-carry}; build it with" \
      "'python scripts/carry.py' and pass carry=[\".cache/gpu-carry\"] to the device run"
    FAILED=1 && finish
  }
  "$PY" scripts/carry.py --verify "$CARRY" || { say "error: $CARRY does not match its manifest"; FAILED=1; finish; }
  DEVICE=auto
fi

# -- install --------------------------------------------------------------------------------
step install 60 0 "$PY" -m pip install --no-deps --no-build-isolation --no-index -q -e "$REPO"

# -- pytest -m gpu --------------------------------------------------------------------------
if "$PY" -c "import pytest" 2>/dev/null; then
  # a test module that cannot import here (a missing optional package) must not hide the rest
  step pytest 90 1 "$PY" -m pytest -m gpu -q -p no:cacheprovider --continue-on-collection-errors \
    --junitxml="$OUT/pytest-gpu.xml" tests/
else
  say "pytest: skipped, $PY has no pytest"
  STEPS_JSON+="{\"step\": \"pytest\", \"rc\": null, \"seconds\": 0, \"skipped\": true},"
fi

# -- real-weight sweep ----------------------------------------------------------------------
SWEEP=(task=polarity model=minilm-l6 seed=0 train.max_steps=200 train.eval_every_steps=100)
[ "$MODE" = cpu ] && SWEEP+=(train.max_steps=4 train.eval_every_steps=2 train.batch_size=4 \
  train.warmup_steps_excluded=1)
step sweep 150 1 "$PY" run.py -m method=lora,prefix,adapter "${SWEEP[@]}" \
  model.source.asset=null "model.source.path=$CARRY/minilm-l6" \
  task.source.asset=null "task.source.path=$CARRY/data/polarity.csv" \
  train.precision=bf16 "device=$DEVICE" tracker=none data_cache=false force=true \
  "results_dir=$OUT/sweep" "hydra.sweep.dir=$OUT/sweep/hydra" '~hydra.callbacks.report'
# on CPU with tiny weights the scores cannot agree: every method only has to have a record
step compare 30 1 "$PY" scripts/sweep_compare.py --records "$OUT/sweep/records" \
  --out "$OUT/sweep_compare.md" --require "$([ "$MODE" = gpu ] && echo agree || echo present)"

# -- cost table -----------------------------------------------------------------------------
COST=(--out "$OUT/cost" --tokenizer "$CARRY/smollm2-tokenizer" --device "$DEVICE")
if [ "$MODE" = cpu ]; then
  COST+=(--tiny --batch-size 2 --steps 4 --warmup 1 --overhead-steps 4 --overhead-repeats 2)
else
  COST+=(--batch-size "$BATCH" --steps "$STEPS" --overhead-steps "$STEPS" --overhead-repeats 2)
fi
mkdir -p "$OUT/cost"
echo "scripts/gpu_check.sh${1:+ $1} (cost step: python scripts/cost_table.py run ${COST[*]})" \
  | sed "s#$OUT#\$OUT#g; s#$REPO/##g" >"$OUT/cost/command.txt"
step cost 400 1 "$PY" scripts/cost_table.py run "${COST[@]}"

# -- PERFORMANCE.md -------------------------------------------------------------------------
cp docs/PERFORMANCE.md "$OUT/PERFORMANCE.md"
step render 30 1 "$PY" scripts/cost_table.py render --out "$OUT" --write "$OUT/PERFORMANCE.md"
finish

#!/usr/bin/env bash
# The offline benchmark in resumable stages (docs/benchmarks/README.md is the protocol;
# version 2, issue 38, since 2026-12-05):
#
#   scripts/offline_benchmark.sh DIR [STAGE...]     e.g. DIR=docs/benchmarks/offline-2026-12-02
#
#   grid[:TASK]   stage 1: 21 methods x 4 lr scales (0.3,1,3,10) x selection seed 100,
#                 dev only (test sealed), on each task (or one task), one task at a time,
#                 into DIR/grid
#   select        choose each cell's scale on dev -> DIR/selection.{md,json} (trains nothing)
#   extend        one scale beyond the grid's edge for every cell chosen there, then select;
#                 it and final stop (exit 2) at a task whose step budget the protocol doubles
#   final[:TASK]  seeds $SEEDS (default 0,1,2,3,4) of each chosen recipe (or one task's),
#                 into DIR/final
#   costs[:TASK]  a clean cost run per task (each benchmarked method alone in a fresh process, one
#                 thread as the runs train): DIR/costs/TASK.{json,md}; run it on an idle
#                 machine, nothing else running
#   report        DIR/report (the benchmark: chosen recipes, all seeds; time and memory from
#                 DIR/costs when measured) and DIR/grid/report (the whole search)
#   status        per task: grid points, extension and final runs done and left, hours spent
#                 and left at the records' own pace (reads records only; any time)
#   stop          end the chunk under way now (from another shell): DRAIN, then SIGTERM to
#                 its runs, which checkpoint their step and resume when the chunk restarts
#   audit         whether the records kept the protocol: grid sealed, finals on the chosen
#                 recipes, predictions intact, test read once, one setting per task (exit 1
#                 if not; reads records only; any time)
#
# No stage means grid, select, extend, final, costs, report, in order. Every stage is resumable: a run whose record says
# success is skipped (run identity), so after a kill or a reboot the same command goes on.
# To end a chunk without losing a run: `touch DIR/DRAIN`. The runs under way finish and
# record, no new one starts, and the script exits 3; the same command later removes DRAIN
# and goes on. To end it now: `scripts/offline_benchmark.sh DIR stop` (from another shell)
# drains and stops the runs under way at their current step, each with its checkpoint and
# an `interrupted` record; the same command later resumes them from that step.
# Run nothing else on the machine meanwhile (two sweeps sharing 2 cores slow each run ~6x).
# Environment: N_JOBS (runs at once, as lanes; default 2 = this machine's cores, on a GPU
# machine the number of GPUs), SEEDS (final seeds), SCALES (the grid's lr scales, e.g. 0.3,1,3 for the
# SmolLM2 subset in its own DIR; default the preset's), METHODS (a subset, a,b), EXTRA
# (KEY=VALUE overrides for every run, e.g. model=smollm2-135m), COMMIT=1 (git-commit DIR's
# records after each chunk), PYTHON. The SmolLM2 subset (docs/benchmarks/README.md, v2, 7):
#   SCALES=0.3,1,3 SEEDS=0,1,2 METHODS=full,lora,... EXTRA=model=smollm2-135m \
#     scripts/offline_benchmark.sh DIR/smollm2 grid:polarity select extend final:polarity
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=${1:?usage: scripts/offline_benchmark.sh DIR [grid[:TASK]|select|extend|final[:TASK]|costs[:TASK]|report|status|audit ...]}
shift
STAGES=("$@")
[ ${#STAGES[@]} -gt 0 ] || STAGES=(grid select extend final costs report)
# the preset's tasks, in its order (wnut16 first: its recipe is the one to check early)
read -r -a TASKS <<< "$(sed -n 's/^ *task: *//p' conf/experiment/offline-benchmark.yaml | tr , ' ')"
# and its methods: the costs stage measures these only (not every registered method)
BENCHMARKED=$(sed -n 's/^ *method: *//p' conf/experiment/offline-benchmark.yaml)
SEEDS=${SEEDS:-0,1,2,3,4}
GRID=()  # the grid's scales, passed to every stage alike
[ -z "${SCALES:-}" ] || GRID=(--scales "$SCALES")
SUBSET=()  # grid and extend: these methods only
[ -z "${METHODS:-}" ] || SUBSET=(--methods "$METHODS")
read -r -a EXTRA <<< "${EXTRA:-}"
PYTHON=${PYTHON:-python}
# N_JOBS lanes: each runs the stage's sweeps one run at a time, and they share the runs by
# their locks, so no core idles at a sweep's tail (commands.call_all); threads = cores / lanes
# their sweeps write no report as each ends: DIR is tracked by git, and a report rewritten
# mid-stage would make the other lane's next record say git_dirty; the report stage writes it
PARALLEL=(--lanes "${N_JOBS:-2}" train.threads=auto hydra.callbacks.report.write_report=false)
# grid and extend: no latency probe (a quarter of a polarity grid run's wall time, 22 of 88 s;
# selection reads dev only, costs come from the costs stage; instrument.* is not in a run's id)
TUNING=(instrument.inference=false)
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled
mkdir -p "$DIR"
export PEFTBENCH_DRAIN_FILE="$(cd "$DIR" && pwd)/DRAIN"  # absolute: the runs' cwd may differ
TRAINS=0  # status, audit and stop read the folder (stop writes DRAIN): they keep the drain
for stage in "${STAGES[@]}"; do
  case ${stage%%:*} in grid|select|extend|final|costs) TRAINS=1 ;; esac
done
if [ "$TRAINS" = 1 ] && [ -e "$PEFTBENCH_DRAIN_FILE" ]; then
  rm -f "$PEFTBENCH_DRAIN_FILE"
  echo "[bench] removed $DIR/DRAIN (left by the last chunk): going on"
fi

commit() {  # $1: what finished
  if [ "${COMMIT:-0}" = 1 ]; then
    git add "$DIR" && git commit -q -m "offline benchmark: $1 (records)" || true
  else
    echo "[bench] $1 done; commit it with: git add $DIR && git commit -m 'offline benchmark: $1'"
  fi
}

for stage in "${STAGES[@]}"; do
  name=${stage%%:*}
  only=${stage#*:}
  [ "$only" = "$stage" ] && only=""
  case $name in
    grid)
      for task in "${TASKS[@]}"; do
        [ -z "$only" ] || [ "$only" = "$task" ] || continue
        echo "[bench] grid: $task"
        "$PYTHON" -m peftbench.cli benchmark grid --results "$DIR" --tasks "$task" "${GRID[@]}" \
          "${SUBSET[@]}" "${PARALLEL[@]}" "${TUNING[@]}" "${EXTRA[@]}"
        commit "grid $task"
      done ;;
    select)
      "$PYTHON" -m peftbench.cli benchmark select --results "$DIR" --dry-run "${GRID[@]}"
      commit "selection" ;;
    extend)
      "$PYTHON" -m peftbench.cli benchmark extend --results "$DIR" --seeds "$SEEDS" --no-finals "${GRID[@]}" \
        "${SUBSET[@]}" "${PARALLEL[@]}" "${TUNING[@]}" "${EXTRA[@]}"
      commit "extension" ;;
    final)
      for task in "${TASKS[@]}"; do
        [ -z "$only" ] || [ "$only" = "$task" ] || continue
        echo "[bench] final: $task"
        "$PYTHON" -m peftbench.cli benchmark select --results "$DIR" --tasks "$task" \
          --seeds "$SEEDS" "${GRID[@]}" "${PARALLEL[@]}" "${EXTRA[@]}"
        commit "final $task"
      done ;;
    costs)
      for task in "${TASKS[@]}"; do
        [ -z "$only" ] || [ "$only" = "$task" ] || continue
        echo "[bench] costs: $task (load average now: $(cut -d' ' -f1 /proc/loadavg); idle is ~0)"
        "$PYTHON" -m peftbench.cli costs methods --methods "${METHODS:-$BENCHMARKED}" --steps 20 \
          --repeats 3 --fresh-process --out "$DIR/costs/$task.json" +experiment=offline-benchmark "task=$task" \
          train.threads=1 "${EXTRA[@]}"
        commit "costs $task"
      done ;;
    report)
      CLEAN=()  # the clean cost runs measured so far replace the records' time and memory
      for file in "$DIR"/costs/*.json; do [ -e "$file" ] && CLEAN+=("$file"); done
      [ ${#CLEAN[@]} -eq 0 ] || CLEAN=(--costs "${CLEAN[@]}")
      "$PYTHON" -m peftbench.cli report --results "$DIR/final" --out "$DIR/report" "${CLEAN[@]}"
      "$PYTHON" -m peftbench.cli report --results "$DIR/grid" --out "$DIR/grid/report"
      commit "report" ;;
    status)
      "$PYTHON" -m peftbench.cli benchmark status --results "$DIR" --seeds "$SEEDS" \
        --jobs "${N_JOBS:-2}" "${GRID[@]}" "${SUBSET[@]}" ;;
    stop)
      "$PYTHON" -m peftbench.cli benchmark stop --results "$DIR" ;;
    audit)
      "$PYTHON" -m peftbench.cli benchmark audit --results "$DIR" --seeds "$SEEDS" "${GRID[@]}" ;;
    *)
      echo "scripts/offline_benchmark.sh: unknown stage '$stage' (grid, select, extend, final, costs, report, status, audit)" >&2
      exit 2 ;;
  esac
done

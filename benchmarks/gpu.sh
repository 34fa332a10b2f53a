#!/usr/bin/env bash
# GPU benchmarks and tests (issue 12), in under 8 minutes on one GPU; writes benchmarks/results/gpu.md.
#
#   bash benchmarks/gpu.sh                       # on a machine with CUDA
#   DRY_RUN=1 bash benchmarks/gpu.sh             # check the script on a CPU machine (tiny settings,
#                                                # output in /tmp/gpu_dry_run; nothing in results/)
#
# Steps (each under its own time limit, so that one slow step cannot eat the others' time):
#   1. the tests marked `cuda` (engine, perturbation methods, metrics, evaluate, training step);
#   2. benchmarks/matrix.py --device cuda: the gradient part of the matrix (7 architectures, batch 1
#      and 8, ours next to Captum / pytorch-grad-cam / torchcam), Grad-CAM peak memory
#      (max_memory_allocated, fresh process per entry), Score-CAM and Ablation-CAM with every
#      implementation's defaults, and `evaluate` throughput (Python API on the GPU);
#   3. [training block, issue 14: filled in by its owner between the markers below];
#   4. the page: matrix report + test summary + wall time.
# Environment: PYTHON (default .venv/bin/python, else python3), THREADS (CPU threads, default 4).
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
THREADS=${THREADS:-4}
DRY_RUN=${DRY_RUN:-0}
START=$(date +%s)

if [ "$DRY_RUN" = "1" ]; then
    DEVICE=cpu
    WORK=/tmp/gpu_dry_run
    OUT=$WORK/gpu.md
    CACHE=$WORK/cache
    MATRIX_ARGS=(--archs regnet_y_400mf,efficientnet_lite0 --batches 1 --repeats 1 --perturbation-repeats 1
                 --eval-images 32 --quantus-images 16)
else
    DEVICE=cuda
    WORK=benchmarks/logs
    OUT=benchmarks/results/gpu.md
    CACHE=benchmarks/cache/matrix/cuda
    MATRIX_ARGS=(--batches 1,8 --repeats 5 --perturbation-repeats 3 --single-run-archs none
                 --eval-images 2000 --quantus-images 500)
    if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu.sh: no CUDA device visible to $PY (DRY_RUN=1 checks the script on a CPU)" >&2
        exit 2
    fi
fi
mkdir -p "$WORK" "$(dirname "$OUT")"
LOG=$WORK/gpu.log
: > "$LOG"
echo "gpu.sh: python $PY, device $DEVICE, log $LOG" | tee -a "$LOG"

# ---- 1. tests marked cuda (about 1 minute) ----------------------------------------------
TESTS_OUT=$WORK/gpu_tests.txt
timeout 150 "$PY" -m pytest -m cuda -q -p no:randomly tests/test_cuda.py > "$TESTS_OUT" 2>&1
TESTS_RC=$?
TESTS_SUMMARY=$(tail -n 1 "$TESTS_OUT")
echo "tests (rc $TESTS_RC): $TESTS_SUMMARY" | tee -a "$LOG"

# ---- 2. the matrix on the device (at most 5 minutes) --------------------------------------
timeout 300 "$PY" benchmarks/matrix.py --device "$DEVICE" --threads "$THREADS" --cache "$CACHE" --out "$OUT" \
    --stages grad,memory,perturbation,evaluate,report --memory-entries gradcam --no-all-perturbation-methods \
    "${MATRIX_ARGS[@]}" >> "$LOG" 2>&1
MATRIX_RC=$?
if [ $MATRIX_RC -ne 0 ]; then  # a stage ran out of time or failed: write the page from what is cached
    echo "matrix: rc $MATRIX_RC (124 = time limit); writing the page from the cached cells" | tee -a "$LOG"
    timeout 60 "$PY" benchmarks/matrix.py --device "$DEVICE" --threads "$THREADS" --cache "$CACHE" --out "$OUT" \
        --stages report "${MATRIX_ARGS[@]}" >> "$LOG" 2>&1
fi

# ===== BEGIN training block (issue 14; owned by the interpretable-gradients engineer) =====
# NOTE (engineer F): an earlier, uncommitted version of this file that held this block was
# overwritten by mistake while the rest of the script was written. The command below is
# reconstructed from guided_bench.py's documented GPU usage; its owner should check it (and
# its time budget against the 8 minutes of the whole script). Skipped in a dry run.
if [ "$DRY_RUN" != "1" ]; then
    timeout 480 "$PY" benchmarks/guided_bench.py --preset gpu --device cuda --stage all >> "$LOG" 2>&1
    echo "training block: rc $?" | tee -a "$LOG"
fi
# ===== END training block =====

# ---- 4. the page -------------------------------------------------------------------------
END=$(date +%s)
{
    echo
    echo "## Tests marked \`cuda\`"
    echo
    echo "\`pytest -m cuda tests/test_cuda.py\`: $TESTS_SUMMARY (exit code $TESTS_RC)."
    echo
    echo "## Run"
    echo
    echo "\`benchmarks/gpu.sh\` took $((END - START)) s in all (tests, matrix on $DEVICE with $THREADS CPU threads," \
         "page); matrix exit code $MATRIX_RC. Log: \`$LOG\`."
} >> "$OUT"
echo "gpu.sh: wrote $OUT in $((END - START)) s" | tee -a "$LOG"

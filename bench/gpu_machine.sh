#!/usr/bin/env bash
# Every GPU check that needs no TensorRT, in one call, with a python that already has a CUDA
# build of torch (a GPU container, a machine without internet access):
#
#     bash bench/gpu_machine.sh [OUT_DIR]        # default OUT_DIR: bench/results
#
# 1. makes this checkout importable without installing anything (no network needed);
# 2. bench/gpu_check.py: the kernels as a PyTorch CUDA extension against F.grid_sample (float64
#    reference) on fresh random inputs, then timed against eager PyTorch and torch.compile;
# 3. the pytest GPU tests: the kernels again, and TrtSession's CUDA side (pinned buffers,
#    streams, graphs per batch size, threads) on the real GPU with both CUDA bindings;
# 4. bench/gpu_models.py: whole models (three checkpoints and an OCR TPS rectifier) at batch 1
#    and 64, eager / torch.compile / reduce-overhead / our kernels swapped in, with and without
#    a CUDA graph, each checked against eager; budgeted to 3 minutes (--budget-s).
# Writes the gpu_check and gpu_models JSON, the pytest junit XML and a log to OUT_DIR; prints
# a summary last. Exit status: 0 only if every step passed. With our venv: make gpu-check.
# Extra arguments per script: GPU_CHECK_ARGS, GPU_MODELS_ARGS (e.g. --dry-run on a CPU).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=$(mkdir -p "${1:-bench/results}" && cd "${1:-bench/results}" && pwd)
PY=${PYTHON:-python3}
export MAX_JOBS=${MAX_JOBS:-$(nproc)} PYTHONUNBUFFERED=1
exec > >(tee "$OUT/gpu_machine.log") 2>&1

summary=()
safe=()
status=0
step() {  # step NAME TIMEOUT_S CMD...: run, time, remember the result
    local name=$1 limit=$2 t0=$SECONDS rc
    shift 2
    echo "==== $name"
    timeout "$limit" "$@"
    rc=$?
    summary+=("$(printf '%-26s rc=%-3s %4d s' "$name" "$rc" $((SECONDS - t0)))")
    [ "$rc" -eq 0 ] || status=1
}

echo "date: $(date -u +%FT%TZ)  host: $(hostname)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem,temperature.gpu \
    --format=csv || echo "nvidia-smi failed"
"$PY" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__,
'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available() and torch.cuda.get_device_name())"

if ! "$PY" -c "import stn_deploy.runtime" 2>/dev/null; then
    # The package maps the product's top-level folders into one namespace (pyproject.toml's
    # package-dir); a folder of links does the same without pip or a network.
    shim=$(mktemp -d)/stn_deploy
    mkdir -p "$shim"
    ln -s "$PWD"/stn_deploy/*.py "$shim"/
    for sub in models export runtime plugins; do ln -s "$PWD/$sub" "$shim/$sub"; done
    export PYTHONPATH="$(dirname "$shim")${PYTHONPATH:+:$PYTHONPATH}"
    safe=(env PYTHONSAFEPATH=1)  # else `python -c/-m` puts ./ first, whose stn_deploy/ is partial
fi
step "import stn_deploy" 60 "${safe[@]}" "$PY" -c "import stn_deploy.runtime.trt, stn_deploy.plugins.cpu"
step "gpu_check.py" 360 "$PY" bench/gpu_check.py --out "$OUT" ${GPU_CHECK_ARGS:-}
step "pytest -m gpu" 300 "${safe[@]}" "$PY" -m pytest -q -m gpu -p no:cacheprovider \
    --junitxml "$OUT/pytest-gpu.xml" tests/runtime/test_trt_session_gpu.py \
    tests/plugins/test_gpu_kernels.py
# A skipped GPU test checked nothing: on this machine that is a failure, not a pass.
skipped=$(grep -o 'skipped="[0-9]*"' "$OUT/pytest-gpu.xml" 2>/dev/null | head -1 | tr -dc 0-9)
if [ "${skipped:-0}" != 0 ]; then
    summary+=("pytest skipped $skipped GPU tests (see the log for why): counted as a failure")
    status=1
fi
step "gpu_models.py" 240 "$PY" bench/gpu_models.py --out "$OUT" ${GPU_MODELS_ARGS:-}

echo "==== summary"
printf '%s\n' "${summary[@]}"
echo "gpu_machine: $([ $status -eq 0 ] && echo PASS || echo FAIL)"
exit $status

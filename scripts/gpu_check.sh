#!/usr/bin/env bash
# The GPU check: the benchmarks with --device cuda, the quickstart on the GPU, and the tests that
# train through the engine (which picks the GPU when there is one). Each stage has its own time
# limit and writes into $OUT as it goes, so a slow stage costs only itself.
#
#   OUT=/tmp/gpu bash scripts/gpu_check.sh              # on a machine with a CUDA build of torch
#
# Packages the machine lacks can come as wheels in .whl/ (installed into /tmp/site first).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
PY=${PYTHON:-python3}
stage() { echo; echo "=== $1 ($(date +%T))"; }

stage "install"
if [ -d .whl ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --no-build-isolation --upgrade \
        --target /tmp/site .whl/*.whl . plugins/*/ 2>&1 | grep -v "WARNING: Target directory" | tail -5
    export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c "import torch, diffusers, accelerate, ddpm_kit; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'| diffusers', diffusers.__version__, '| accelerate', accelerate.__version__, '| ddpm-kit', ddpm_kit.__version__,
'|', torch.cuda.get_device_name(0))" | tee -a "$OUT/gpu.txt"
nproc | sed 's/^/cpu cores: /' | tee -a "$OUT/gpu.txt"

stage "benchmarks, eager (every part)"
timeout 150 $PY benchmarks/run.py --device cuda --no-compile --out "$OUT/results_cuda_eager.json" \
    2>&1 | tee "$OUT/bench_eager.log" | tail -30

stage "quickstart on the GPU"
start=$(date +%s)
timeout 150 $PY -m ddpm_kit run recipes/quickstart.toml --run-dir /tmp/runs/quickstart > "$OUT/quickstart.log" 2>&1
echo "exit $? after $(( $(date +%s) - start )) s" | tee -a "$OUT/quickstart.log"
tail -15 "$OUT/quickstart.log"
cp /tmp/runs/quickstart/summary.json "$OUT/quickstart_summary.json" 2>/dev/null
cp /tmp/runs/quickstart/samples/final.png "$OUT/quickstart_samples.png" 2>/dev/null

stage "benchmarks, compiled training and sampling"
timeout 170 $PY benchmarks/run.py --device cuda --parts training sampling --out "$OUT/results_cuda_compiled.json" \
    2>&1 | tee "$OUT/bench_compiled.log" | tail -20

stage "engine tests on the GPU"
timeout "${TEST_LIMIT:-70}" $PY -m pytest -q -x -p no:cacheprovider -m "not slow" tests/test_engine.py \
    tests/test_reliability.py tests/test_fast_paths.py tests/test_conditioning.py 2>&1 | tee "$OUT/tests.log" | tail -25
stage "resume and preemption tests on the GPU"
timeout "${SLOW_TEST_LIMIT:-200}" $PY -m pytest -q -p no:cacheprovider -m slow tests/test_reliability.py \
    tests/test_engine.py -k "resume or kill or preempt or bitwise or equal" 2>&1 | tee "$OUT/tests_slow.log" | tail -15
stage "done"

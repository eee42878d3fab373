#!/usr/bin/env bash
# The GPU check (issue #15), in under 8 minutes on a machine with a CUDA GPU:
#   1. build the CUDA ops (bias_act, upfirdn2d) and, on a GPU, verify them against the reference ops;
#   2. the GPU tests: the kernels against the references (tests/test_cuda_ops.py), the float32 and float16
#      paths against NVIDIA's reference outputs (tests/test_parity.py), projections in every precision
#      (tests/test_precision.py): every test marked 'gpu';
#   3. the GPU figures: synthesis, one projection step and rendering, by precision (fp16 = the official
#      default), beside NVIDIA's own code when OFFICIAL_STYLEGAN2_ADA names a checkout of it
#      (benchmarks/bench_gpu.py).
# Without a GPU it does step 1 only (the build; nvcc is needed) and says so.
#
# Usage:  benchmarks/gpu_check.sh            (from anywhere; PYTHON=... to choose the interpreter)
# Environment: TORCH_CUDA_ARCH_LIST (default: the visible GPU's architecture; 9.0 without a GPU),
#              STYLEGAN_OPS_BUILD_DIR (where the compiled ops are kept), OFFICIAL_STYLEGAN2_ADA (see step 3),
#              TIMEMACHINE_SHARED_DIR (the reference outputs; default ../shared).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
started=$SECONDS
elapsed() { echo "($((SECONDS - started)) s so far)"; }

has_gpu=$($PY -c "import torch; print(int(torch.cuda.is_available()))")
if [ "$has_gpu" = 0 ] && [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
    export TORCH_CUDA_ARCH_LIST=9.0  # one architecture keeps the build short; the kernels are the same
fi

echo "== 1/3 build the CUDA ops ${TORCH_CUDA_ARCH_LIST:+(TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)}"
timeout 300 $PY -m timemachine doctor --build-ops
elapsed
if [ "$has_gpu" = 0 ]; then
    echo "no CUDA GPU visible: the build (the CPU-side part) is done; the GPU tests and figures need a GPU"
    exit 0
fi
$PY -c "import torch; print('GPU:', torch.cuda.get_device_name(0), '| torch', torch.__version__,
                          '| CUDA', torch.version.cuda)"

echo "== 2/3 GPU tests"
timeout 150 $PY -m pytest -q -p no:cacheprovider -m gpu \
    tests/test_cuda_ops.py tests/test_parity.py tests/test_precision.py
elapsed

echo "== 3/3 GPU figures (AFHQ 512x512 architecture, random weights)"
timeout 150 $PY benchmarks/bench_gpu.py --rounds 3
elapsed

#!/usr/bin/env bash
# GPU check of bandsolve's CUDA backend, for a machine with an NVIDIA GPU.
#
#   tools/gpu_check.sh OUTDIR
#
# Installs nothing (expects CuPy, Numba with numba-cuda, and optionally PyTorch/JAX).
# 1. the CUDA test cases on the real device (tests/gpu_cases.py: the same cases CI runs
#    under the simulator; tests/gpu_hw_cases.py: CuPy in/out, streams, no host transfer;
#    tests/gpu_adapter_cases.py: PyTorch CUDA tensors and JAX GPU arrays through the
#    adapters),
# 2. the benchmarks (benchmarks/gpu_bench.py): forward and forward+backward at the four issue
#    shapes against the CPU backend, a dense cupy.linalg solve and a PyTorch loop.
# Writes into OUTDIR: tests.log, tests.junit.xml, bench.log, gpu_bench.json, gpu_bench.md,
# nvidia-smi.txt and summary.md. Sections are time-capped (about 9 minutes in all) and a
# failing section does not stop the next one. Exit status: that of the tests.
set -uo pipefail

OUT=${1:?usage: tools/gpu_check.sh OUTDIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
unset NUMBA_ENABLE_CUDASIM  # the real device, never the simulator
TEST_SECONDS=${GPU_CHECK_TEST_SECONDS:-210}
BENCH_SECONDS=${GPU_CHECK_BENCH_SECONDS:-300}

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed" >> "$OUT/nvidia-smi.txt"
"$PY" - > "$OUT/versions.txt" 2>&1 <<'EOF'
import importlib
for name in ("numpy", "numba", "cupy", "torch", "jax"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as error:
        print(name, "unavailable:", error)
from numba import cuda
print("numba.cuda implementation:", getattr(cuda, "implementation", "?"))
print("device:", cuda.get_current_device().name)
EOF

start=$(date +%s)
timeout --kill-after=10 "$TEST_SECONDS" "$PY" -m pytest -q -p no:cacheprovider -rfEs \
    --junitxml="$OUT/tests.junit.xml" tests/gpu_cases.py tests/gpu_hw_cases.py \
    tests/gpu_adapter_cases.py \
    > "$OUT/tests.log" 2>&1
test_status=$?
test_seconds=$(( $(date +%s) - start ))
[ "$test_status" -eq 124 ] && echo "TIMED OUT after ${TEST_SECONDS}s" >> "$OUT/tests.log"

start=$(date +%s)
timeout --kill-after=10 $(( BENCH_SECONDS + 30 )) "$PY" benchmarks/gpu_bench.py "$OUT" \
    --budget "$BENCH_SECONDS" > "$OUT/bench.log" 2>&1
bench_status=$?
bench_seconds=$(( $(date +%s) - start ))

{
    echo "# gpu_check summary"
    echo
    echo "- tests: exit status $test_status after ${test_seconds}s ($(tail -n 1 "$OUT/tests.log"))"
    echo "- benchmark: exit status $bench_status after ${bench_seconds}s"
    echo
    [ -f "$OUT/gpu_bench.md" ] && cat "$OUT/gpu_bench.md"
} > "$OUT/summary.md"
cat "$OUT/summary.md"
exit "$test_status"

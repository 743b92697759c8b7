#!/usr/bin/env bash
# One-shot check of bandsolve's CUDA backend on a machine with an NVIDIA GPU:
#
#   bash tools/gpu_check.sh OUTDIR [--reference PATH/smnn.py]
#
# Run from anywhere (it works from the repository root); needs no network and installs
# nothing (expects numba-cuda, CuPy, PyTorch with CUDA, JAX with CUDA). All of it runs in
# one Python process (tools/gpu_check.py), so every kernel compiles once for the tests and
# the benchmarks; Numba's disk cache goes to a folder beside OUTDIR, so a second run in the
# same place skips compilation. Sections and their hard caps: preflight 60 s (stops the
# script with exit 2 and a clear message if anything is missing, e.g. "no CUDA driver" on
# a CPU machine, within seconds), tests 150 s, benchmarks the rest; the whole run is
# killed at 385 s (under 6.5 minutes). Output is unbuffered and every case is one JSON line
# in OUTDIR/results.jsonl as soon as it is known, so a timeout loses nothing.
#
# OUTDIR gets at most 5 files: log.txt (everything printed), results.jsonl, summary.md,
# tests.junit.xml, nvidia-smi.txt.
set -uo pipefail

OUT=${1:?usage: bash tools/gpu_check.sh OUTDIR [--reference PATH/smnn.py]}
shift
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD:$PWD/adapters:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export NUMBA_CACHE_DIR=${NUMBA_CACHE_DIR:-$(dirname "$OUT")/bandsolve-numba-cache}
unset NUMBA_ENABLE_CUDASIM  # the real device, never the simulator
TOTAL=${GPU_CHECK_TOTAL_SECONDS:-375}
export GPU_CHECK_TOTAL_SECONDS=$TOTAL

exec > >(tee -a "$OUT/log.txt") 2>&1
echo "gpu_check: $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null || echo '?') -> $OUT"
if command -v nvidia-smi > /dev/null; then
    timeout 20 nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed (see nvidia-smi.txt)"
else
    echo "nvidia-smi: not found" > "$OUT/nvidia-smi.txt"
fi
timeout --kill-after=5 $((TOTAL + 10)) "$PY" -u tools/gpu_check.py "$OUT" "$@"
status=$?
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    echo "gpu_check: KILLED at the overall cap of $((TOTAL + 10)) s; results.jsonl has every case so far"
fi
echo "gpu_check: exit status $status"
exit "$status"

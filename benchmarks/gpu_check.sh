#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): the CUDA, bf16 and FSDP training paths on tiny models and
# their throughput, in under 8 minutes on one GPU. Its table lands in $OUT/gpu_check.md.
#
# Through the device tool (its image has torch, transformers and accelerate but not trl or datasets):
#   here, once:   bash benchmarks/gpu_check.sh --fetch-wheels     (into .whl/, which git ignores)
#   then:         run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=540)
# On a GPU machine with prefixrl installed: bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# what the device image lacks, at the versions pyproject.toml pins (math-verify is imported only by --task math)
WHEELS=(trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19)

if [ "${1:-}" = "--fetch-wheels" ]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${WHEELS[@]}"
  exit 0
fi
if [ -d .whl ]; then  # the carried wheels, ahead of the image's packages; src/ for prefixrl itself
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia-smi.txt" || true
timeout 480 python3 benchmarks/gpu_check.py --out "$OUT" 2>&1 | tee "$OUT/gpu_check.log"

#!/usr/bin/env bash
# The checks a GPU is needed for, in one run of about 8 minutes on an H100/H200: the
# CUDA tests, then the benchmarks whose GPU figures docs/benchmarks.md reports. Each
# step has its own time limit, and a failing step does not stop the others.
#
#     bash scripts/gpu_checks.sh [OUTPUT_FOLDER]     # default: $OUT, else ./gpu-checks
#
# The figures (one JSON object per benchmark) and logs are written to the output folder.
# Benchmarks on real data read ../shared/data; where that folder is missing (a machine
# that got only the working tree), a copy of it at .devrun/shared/data is linked there.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu-checks}}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if [ ! -d ../shared/data ] && [ -d .devrun/shared/data ]; then
    mkdir -p ../shared && ln -s "$PWD/.devrun/shared/data" ../shared/data
fi

step() {  # step NAME SECONDS COMMAND...: run it, keep its output, say how it ended
    local name=$1 seconds=$2
    shift 2
    local start=$SECONDS
    timeout "$seconds" "$@" >"$out/$name.log" 2>&1
    echo "$name: exit $? in $((SECONDS - start)) s" | tee -a "$out/summary.txt"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available())"
} >"$out/machine.txt" 2>&1
cat "$out/machine.txt"

step tests 240 python3 -m pytest -q -p no:cacheprovider tests/core/test_device.py tests/core/test_predict.py \
    tests/core/test_train.py
step bench_predict 120 python3 bench/bench_predict.py --device cuda --model nuclei
step bench_monai 180 python3 bench/bench_monai.py --device cuda
step bench_augment 60 python3 bench/bench_augment.py --device cuda
step bench_train_step 60 python3 bench/bench_train_step.py --device cuda
step bench_postprocess 60 python3 bench/bench_postprocess.py --device cuda
step bench_precision 90 python3 bench/bench_precision.py --device cuda
for name in bench_predict bench_monai bench_augment bench_train_step bench_postprocess bench_precision; do
    tail -n 1 "$out/$name.log" >"$out/$name.json"
done

#!/usr/bin/env bash
# The GPU checks in one run, for a machine with CUDA: the `gpu` tests, then scripts/bench_scale.py's GPU rows
# (bf16, each family at its own resolution). Each step has its own time limit, so one that hangs costs only its
# share; logs go to $OUT (or out/gpu).
#   bash scripts/gpu_checks.sh            # about 6 minutes on one H200 (5.5 measured)
set -u
out=${OUT:-out/gpu}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
$py -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__,
'transformers', transformers.__version__, torch.cuda.get_device_name())" 2>&1 | tee "$out/env.log"
timeout 150 $py -m pytest -m gpu -q -s -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$out/tests.log"
bench() {  # time limit, then bench_scale's arguments
    local limit=$1; shift
    echo "== bench_scale.py $*" | tee -a "$out/bench.log"
    timeout "$limit" $py scripts/bench_scale.py --device cuda --dtype bf16 --repeats 3 "$@" 2>&1 | tee -a "$out/bench.log"
}
bench 200 --family sd15 --particles 16 --potential clip --channels-last --compile
bench 110 --family sdxl --particles 8 --potential clip
bench 130 --family flux --particles 4 --potential clip
bench 130 --family flux --particles 4 --potential vqa
bench 150 --family wan --particles 2

#!/usr/bin/env bash
# The GPU checks of a session with a GPU: the device-parametrized tests on CUDA, then the training and evaluation
# benchmarks on CUDA. Uses the machine's own python3 (with torch); writes logs to ${OUT:-/tmp}/.
#   bash benchmarks/gpu_checks.sh
set -uo pipefail
out=${OUT:-/tmp}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import torch, timm, tqdm; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
python3 -m pytest -q -p no:cacheprovider tests/test_devices.py tests/train/test_distributed.py 2>&1 | tail -n 5 | tee "$out/tests.log"
# The paper's CIFAR-100 setting: resnet_mcdo_smoothing_18 at width 64, batch 128, 100 classes.
python3 benchmarks/train_speed.py --device cuda --width 64 --batch-size 128 --num-classes 100 --steps 60 \
    --workers 8 --runs plain,fp32,fp32+cl,auto,auto+cl,fp32+compile,auto+cl+compile 2>&1 | grep '^{' | tee "$out/train_speed.log"
python3 benchmarks/eval_speed.py --device cuda --images 1024 --skip precision 2>&1 | grep '^{' | tail -n 1 | tee "$out/eval_speed.log"

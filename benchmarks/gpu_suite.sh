#!/usr/bin/env bash
# Issue 9's GPU measurements (and the CUDA tests) in one command, for a lent GPU machine, whose Python
# already has torch, lightning, torchmetrics, scipy, opencv and timm but not the rest of zsad's needs.
#
#   bash benchmarks/gpu_wheels.sh                       # here: the missing wheels into .whl/ (~11 MB)
#   device run: bash benchmarks/gpu_suite.sh            # there, carrying .whl; ~6-8 min on one H100
#
# One log per step lands in $OUT (or ./gpu_results): device.txt, cuda_tests.txt, flops.txt (FLOPs per image,
# counted on the meta device, to turn images/s into TFLOP/s; PEAK_BF16 = the GPU's datasheet bf16 TFLOP/s,
# default 989 as on the H100 SXM and H200), inference_fp32.txt, inference_tf32.txt, inference_bf16.txt,
# end_to_end_bf16.txt, train_bf16.txt, scale_eval_cuda.txt. Their numbers go into docs/performance.md with the device named.
# SMOKE=1 runs the same steps on the CPU with the tiny backbone and a few images (checks the script).
# STEPS="inference_bf16 train_bf16" runs only those steps (to split the suite over two 10-minute calls).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_results}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
if ! "$PY" -c "import open_clip, omegaconf" 2> /dev/null; then
  compgen -G ".whl/*.whl" > /dev/null || { echo "zsad's packages are missing: run benchmarks/gpu_wheels.sh here first"; exit 1; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 WANDB_MODE=disabled

step() {  # step NAME ARGS...: run and keep the log, whatever the exit status (only NAMEs in $STEPS, if set)
  local name=$1
  shift
  if [ -n "${STEPS:-}" ] && [[ " $STEPS " != *" $name "* ]]; then return 0; fi
  echo "== $name: $*"
  "$PY" "$@" 2>&1 | tee "$OUT/$name.txt"
  echo "== $name exit ${PIPESTATUS[0]}" | tee -a "$OUT/$name.txt"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi"; "$PY" -c \
  "import torch, open_clip, lightning; print('torch', torch.__version__, 'open_clip', open_clip.__version__, 'lightning', lightning.__version__)"; } \
  2>&1 | tee "$OUT/device.txt"
step cuda_tests -m pytest -q -p no:cacheprovider tests/lightning_modules/metrics tests/lightning_modules/vand/test_vand_authors.py -k "cuda"
if [ "${SMOKE:-0}" = 1 ]; then
  MODEL=(--backbone zsad-tiny-vit --image-size 64 --dpam-start 2 --map-layers 6 --device cpu)
  INFER=(--batch-sizes 1,4 --images 8)
  TRAIN=(--categories 3 --images-per-category 8 --copies 2 --file-size 64 --epochs 2 --uncached-epochs 1 --workers 0)
  EVAL=(--categories 2 --images-per-category 8 --copies 2 --file-size 64 --batch-size 4 --workers 0)
  SCALE=(--device cpu --categories 3 --samples 2 --size 64 --model-size 64 --model-batches 1)
else
  MODEL=(--backbone ViT-L-14-336-quickgelu --image-size 518 --dpam-start 6 --map-layers 24 --device cuda)
  INFER=(--batch-sizes 1,8,16,32 --images 256)
  # 1,725 training images (MVTec AD's test split size) = 3 categories x 23 rendered images x 25 copies.
  TRAIN=(--categories 3 --images-per-category 23 --copies 25 --file-size 518 --epochs 15 --uncached-epochs 1 --workers 8)
  # one whole evaluation with real-size files (MVTec AD's are 700-1,024 px): does data loading keep up?
  EVAL=(--categories 2 --images-per-category 16 --copies 16 --file-size 1024 --batch-size 32 --workers 8)
  # issue 27: the evaluator's states on the GPU, as in a GPU test loop (Real-IAD-shaped, 7,500 maps of 518 px)
  SCALE=(--device cuda --threads 8 --model-size 224)
fi
step flops benchmarks/flops.py "${MODEL[@]}" --peak "bf16 dense peak from the datasheet=${PEAK_BF16:-989}"
step inference_fp32 benchmarks/inference.py "${MODEL[@]}" --precision 32-true "${INFER[@]}"
step inference_tf32 benchmarks/inference.py "${MODEL[@]}" --precision 32-true --matmul-precision high "${INFER[@]}"
step inference_bf16 benchmarks/inference.py "${MODEL[@]}" --precision bf16-mixed "${INFER[@]}"
step end_to_end_bf16 benchmarks/end_to_end.py "${MODEL[@]}" --precision bf16-mixed "${EVAL[@]}"
step train_bf16 benchmarks/train_epoch.py "${MODEL[@]}" --precision bf16-mixed "${TRAIN[@]}"
step scale_eval_cuda benchmarks/scale_eval.py --world 1 "${SCALE[@]}"

#!/usr/bin/env bash
# One command for a GPU machine: the CUDA tests, the training-step benchmark at batch 64, and a
# 3-minute training run + evaluation, in about 8 minutes. Results go to $OUT (default gpu_check/).
#
#     bash bench/gpu_check.sh            # everything
#     SKIP_TRAIN=1 bash bench/gpu_check.sh
#
# Put the printed figures (benchmark table, steps/s, metrics) in docs/performance.md, "GPU".
# Compiled without CUDA graphs, for comparison (two more minutes):
#     python bench/train_step.py --device cuda --batch 64 --modes compile+amp,compile+amp+graphs --no-flops
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_check}"
mkdir -p "$OUT"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(), torch.__version__)" | tee "$OUT/device.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$OUT/device.txt" 2>/dev/null || true

echo "== CUDA tests"
python -m pytest -q tests/test_cuda.py 2>&1 | tee "$OUT/tests.txt"

echo "== training step, batch 64 (eager, AMP, compiled + AMP + CUDA graphs: what train.py --amp --compile runs)"
python bench/train_step.py --device cuda --batch 64 --modes eager,amp,compile+amp+graphs \
    --repeats 20 --warmup 5 --no-flops --json > "$OUT/train_step.json"
python -c "import json, sys; sys.path.insert(0, 'bench'); import train_step; train_step.print_table(json.load(open('$OUT/train_step.json')))" \
    | tee "$OUT/train_step.txt"

if [ -z "${SKIP_TRAIN:-}" ]; then
    echo "== 3 minutes of training (s3, batch 64, --amp --compile) and evaluation on the 1,024 test sequences"
    if ! python train.py --config configs/s3.toml --out "$OUT/run" --device cuda --amp --compile --time-limit 3 \
            --set train.eval_every=1000 > "$OUT/train.txt" 2>&1; then
        tail -20 "$OUT/train.txt"
        exit 1
    fi
    grep -E "^device|val @|stopping|done" "$OUT/train.txt"
    tail -1 "$OUT/train.txt" | grep -q "^done" || grep "^step" "$OUT/train.txt" | tail -1
    python evaluate.py --ckpt "$OUT/run/latest.pt" --out "$OUT/eval" --device cuda --amp --examples 2 \
        | tee "$OUT/eval.txt" | tail -20
fi
echo "== done: $OUT"

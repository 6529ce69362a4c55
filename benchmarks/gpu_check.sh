#!/usr/bin/env bash
# The checks that need a CUDA GPU, on the offline default model (SmolLM2-135M-Instruct):
#   1. the default job (`gradpruner run`), which picks CUDA and bf16 by itself;
#   2. issue 7's setting on ARC-Easy: 250 LoRA healing steps (batch 8, rank 8, lr 2e-4), 400 items,
#      auto (with its default budget, 10 % of the heal) beside block influence and the paper's rule.
# Logs and reports go to OUT (8 files at most); models and probes to WORK.
#   bash benchmarks/gpu_check.sh OUT [WORK]
set -uo pipefail
out=${1:-runs/gpu}
work=${2:-$out/work}
mkdir -p "$out" "$work"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "${PYTHON:-python3}" -c "import torch, transformers, peft, accelerate; print('torch', torch.__version__, \
'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)"
} > "$out/env.txt" 2>&1

SECONDS=0
timeout "${RUN_LIMIT:-240}" "${PYTHON:-python3}" -m gradpruner.cli run --out "$work/run" --overwrite > "$out/run.log" 2>&1
echo "run: exit $? after $SECONDS s" >> "$out/env.txt"
cp "$work/run/report.md" "$work/run/report.json" "$out/" 2>/dev/null

SECONDS=0
timeout "${COMPARE_LIMIT:-360}" "${PYTHON:-python3}" -m gradpruner.cli compare --task arc_easy \
  --methods auto,block_influence,gradpruner --ratio 0.25,0.4 --steps 250 --lr 2e-4 \
  --probe-steps 40 --limit 400 --out "$work/compare" > "$out/compare.log" 2>&1
echo "compare: exit $? after $SECONDS s" >> "$out/env.txt"
cp "$work/compare/results.md" "$work/compare/results.json" "$out/" 2>/dev/null
cat "$out/env.txt"

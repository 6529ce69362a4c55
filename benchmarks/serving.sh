#!/usr/bin/env bash
# docs/SERVING.md's measurements: `gradpruner run --export gguf` on the default model and task (its
# default cut, healed, and the dense model fine-tuned beside it), exported to GGUF (f16, q8_0,
# q4_k_m; each file checked against transformers) and scored on 300 ARC-Easy items through
# transformers and through llama.cpp (the run's report); then llama.cpp's speed of the pruned and
# the dense f16 files side by side (the dense model as released: speed depends on the shapes, not
# on the weights). Needs the serve extra. OUT defaults to runs/serving.
set -euo pipefail
OUT=${1:-runs/serving}
[ -d "$OUT/run" ] || gradpruner run --export gguf --quant f16,q8_0,q4_k_m --out "$OUT/run"
DENSE=$(python -c "from gradpruner.assets import default_model_dir; print(default_model_dir())")
[ -d "$OUT/dense-gguf" ] || gradpruner export --model "$DENSE" --quant f16 --out "$OUT/dense-gguf"
ls -l "$OUT"/run/gguf/*.gguf "$OUT"/dense-gguf/*.gguf
python benchmarks/bench_serving_speed.py "$(ls "$OUT"/dense-gguf/*-f16.gguf)" \
  "$OUT/run/gguf/model-f16.gguf" --threads 1 | tee "$OUT/speed.json"

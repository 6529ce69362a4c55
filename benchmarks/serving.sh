#!/usr/bin/env bash
# docs/SERVING.md's measurements: the default model dense and pruned by `gradpruner run` (its
# default cut, healed), exported to GGUF (f16, q8_0, q4_k_m; each file checked against
# transformers), scored on 300 ARC-Easy items through transformers and through llama.cpp, and
# llama.cpp's speed of the f16 files side by side. Needs the serve extra. OUT defaults to
# runs/serving.
set -euo pipefail
OUT=${1:-runs/serving}
TYPES="f16 q8_0 q4_k_m"
mkdir -p "$OUT/evals"
[ -d "$OUT/run" ] || gradpruner run --out "$OUT/run"
DENSE=$(python -c "from gradpruner.assets import default_model_dir; print(default_model_dir())")
for name in dense pruned; do
  model=$([ $name = dense ] && echo "$DENSE" || echo "$OUT/run/model")
  [ -d "$OUT/$name-gguf" ] || gradpruner export --model "$model" --quant "${TYPES// /,}" --out "$OUT/$name-gguf"
  gradpruner eval --model "$model" --task arc_easy --limit 300 --dtype float32 --out "$OUT/evals/$name-hf.json"
  for q in $TYPES; do
    gradpruner eval --model "$(ls "$OUT/$name-gguf"/*-$q.gguf)" --task arc_easy --limit 300 \
      --out "$OUT/evals/$name-$q.json"
  done
done
ls -l "$OUT"/*-gguf/*.gguf
python benchmarks/bench_serving_speed.py "$(ls "$OUT"/dense-gguf/*-f16.gguf)" \
  "$(ls "$OUT"/pruned-gguf/*-f16.gguf)" | tee "$OUT/speed.json"

#!/usr/bin/env bash
# The README's main job, end to end on generated data:
# generate -> preprocess -> search -> retrain -> export -> serve -> gRPC predict -> stop.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${DEMO_OUT:-demo_out}
ROWS=${DEMO_ROWS:-100000}
PORT=${DEMO_PORT:-8500}
rm -rf "$OUT" && mkdir -p "$OUT/raw"

step() { printf '\n=== %s\n' "$*"; }

step "1/6 generate $ROWS rows of Criteo-format data"
pipeline generate --rows "$ROWS" --seed 7 --output "$OUT/raw/train.tsv"
pipeline generate --rows 20 --seed 8 --output "$OUT/raw/new_rows.tsv"

step "2/6 preprocess with Beam + tensorflow-transform"
pipeline --dataset criteo --input "$OUT/raw/train.tsv" --output "$OUT/data" --runner DirectRunner

step "3/6 search the fusion architecture (CPU preset)"
trainer search --data "$OUT/data" --out "$OUT/search"

step "4/6 retrain the found architecture (Hard: one operation per component)"
trainer retrain --data "$OUT/data" --architecture "$OUT/search/architecture.json" \
  --mode hard --out "$OUT/retrain"

step "5/6 export for TF Serving"
serving export --run "$OUT/retrain" --data "$OUT/data" --model_base_path "$OUT/models" --model_name ctr

step "6/6 serve over gRPC and predict raw rows"
serving serve --model_config_file "$OUT/models/models.config" --port "$PORT" --host 127.0.0.1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
serving predict --target "localhost:$PORT" --model_name ctr --input "$OUT/raw/new_rows.tsv" \
  --format criteo --wait_ready 120

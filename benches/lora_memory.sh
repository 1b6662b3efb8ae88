#!/usr/bin/env bash
# Peak memory of LoRA vs QLoRA training of the same model (SmolLM2-135M from scripts/fetch_smollm2.sh, or any
# Llama directory given as $MODEL): three optimizer steps each, peak resident set size from /usr/bin/time.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-.cache/smollm2-135m-instruct}
[ -f "$MODEL/model.safetensors" ] || { echo "no model at $MODEL (run scripts/fetch_smollm2.sh or set MODEL)"; exit 1; }
cargo build --release -q
WORK=$(mktemp -d)
mkdir -p "$WORK/data/code"
for i in $(seq 1 40); do
  echo "{\"chat_rounds\": [{\"role\": \"human\", \"content\": \"Write a function that returns $i times x.\"}, {\"role\": \"bot\", \"content\": \"def f(x):\\n    return $i * x\"}]}"
done > "$WORK/data/code/train.jsonl"
for peft in lora qlora; do
  cat > "$WORK/$peft.json" <<JSON
{"data_paths": ["$WORK/data/code"], "output_dir": "$WORK/out-$peft", "pretrained_model_path": "$MODEL", "peft_type": "$peft",
 "lora_rank": 16, "lora_alpha": 32, "lora_dropout": 0.0, "seq_length": 128, "per_device_train_batch_size": 2,
 "per_device_eval_batch_size": 2, "max_train_steps": 3, "num_train_epochs": 1, "data_split": "90,10,0",
 "evaluation_steps": 0, "checkpointing_steps": 1000, "learning_rate": 1e-4}
JSON
  /usr/bin/time -v ./target/release/mftcoder train --config "$WORK/$peft.json" --quiet 2> "$WORK/$peft.log" || { cat "$WORK/$peft.log"; exit 1; }
  rss_kb=$(grep "Maximum resident set size" "$WORK/$peft.log" | awk '{print $NF}')
  train_rss=$(grep -o '"rss_mib":[0-9.]*' "$WORK/out-$peft/metrics.jsonl" | cut -d: -f2 | sort -n | tail -1)
  bits=$(grep -o "[0-9.]* bits each" "$WORK/$peft.log" | awk '{print $1}' || true)
  echo "$peft: resident while training ${train_rss%.*} MiB (process peak, loading included: $((rss_kb / 1024)) MiB)${bits:+; base linear weights held at $bits bits/param}"
done
rm -rf "$WORK"

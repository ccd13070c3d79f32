#!/usr/bin/env bash
# Evaluate a GARE checkpoint on the MSR-VTT (9k train, 1k-A test) test split.
#   CKPT=ckpts/msrvtt/ckpt_best.pt DATA=/path/to/msrvtt bash scripts/eval_msrvtt.sh [more flags]
set -euo pipefail
DATA=${DATA:-data/msrvtt}
exec "$(dirname "$0")/launch.sh" --do_eval 1 --datatype msrvtt \
  --init_model "${CKPT:-ckpts/msrvtt/ckpt_best.pt}" \
  --anno_path "$DATA/anns" --video_path "$DATA/videos" --output_dir ckpts/msrvtt_eval \
  --max_words 32 --max_frames 12 --video_framerate 1 --epochs 5 --batch_size 128 --batch_size_val 128 --eval_every_steps 150 "$@"

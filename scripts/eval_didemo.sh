#!/usr/bin/env bash
# Evaluate a GARE checkpoint on the DiDeMo (paragraph retrieval) test split.
#   CKPT=ckpts/didemo/ckpt_best.pt DATA=/path/to/didemo bash scripts/eval_didemo.sh [more flags]
set -euo pipefail
DATA=${DATA:-data/didemo}
exec "$(dirname "$0")/launch.sh" --do_eval 1 --datatype didemo \
  --init_model "${CKPT:-ckpts/didemo/ckpt_best.pt}" \
  --anno_path "$DATA/anns" --video_path "$DATA/videos" --output_dir ckpts/didemo_eval \
  --max_words 64 --max_frames 64 --video_framerate 1 --epochs 5 --batch_size 64 --batch_size_val 64 "$@"

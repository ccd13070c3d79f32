#!/usr/bin/env bash
# Evaluate a GARE checkpoint on the ActivityNet Captions (paragraph retrieval, delta on the video side) test split.
#   CKPT=ckpts/activitynet/ckpt_best.pt DATA=/path/to/activitynet bash scripts/eval_activitynet.sh [more flags]
set -euo pipefail
DATA=${DATA:-data/activitynet}
exec "$(dirname "$0")/launch.sh" --do_eval 1 --datatype activitynet \
  --init_model "${CKPT:-ckpts/activitynet/ckpt_best.pt}" \
  --anno_path "$DATA/anns" --video_path "$DATA/videos" --output_dir ckpts/activitynet_eval \
  --max_words 64 --max_frames 64 --video_framerate 1 --epochs 10 --batch_size 64 --batch_size_val 64 --delta_side video "$@"

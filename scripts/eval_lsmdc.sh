#!/usr/bin/env bash
# Evaluate a GARE checkpoint on the LSMDC (1k test) test split.
#   CKPT=ckpts/lsmdc/ckpt_best.pt DATA=/path/to/lsmdc bash scripts/eval_lsmdc.sh [more flags]
set -euo pipefail
DATA=${DATA:-data/lsmdc}
exec "$(dirname "$0")/launch.sh" --do_eval 1 --datatype lsmdc \
  --init_model "${CKPT:-ckpts/lsmdc/ckpt_best.pt}" \
  --anno_path "$DATA/anns" --video_path "$DATA/videos" --output_dir ckpts/lsmdc_eval \
  --max_words 32 --max_frames 12 --video_framerate 1 --epochs 5 --batch_size 128 --batch_size_val 128 "$@"

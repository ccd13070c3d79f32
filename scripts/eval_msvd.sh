#!/usr/bin/env bash
# Evaluate a GARE checkpoint on the MSVD (multi-sentence test; no temporal aggregation, as the reference) test split.
#   CKPT=ckpts/msvd/ckpt_best.pt DATA=/path/to/msvd bash scripts/eval_msvd.sh [more flags]
set -euo pipefail
DATA=${DATA:-data/msvd}
exec "$(dirname "$0")/launch.sh" --do_eval 1 --datatype msvd \
  --init_model "${CKPT:-ckpts/msvd/ckpt_best.pt}" \
  --anno_path "$DATA/anns" --video_path "$DATA/videos" --output_dir ckpts/msvd_eval \
  --max_words 32 --max_frames 12 --video_framerate 1 --epochs 5 --batch_size 128 --batch_size_val 128 "$@"

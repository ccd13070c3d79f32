#!/usr/bin/env bash
# Train GARE on LSMDC (1k test), then test the best checkpoint.
#   DATA=/path/to/lsmdc NGPU=4 bash scripts/train_lsmdc.sh [more flags]
# DATA holds anns/ (annotation files) and videos/ (best re-encoded with
# preprocess/compress_video.py). Outputs go to ckpts/lsmdc unless --output_dir is given.
set -euo pipefail
DATA=${DATA:-data/lsmdc}
exec "$(dirname "$0")/launch.sh" --do_train 1 --datatype lsmdc \
  --anno_path "$DATA/anns" --video_path "$DATA/videos" --output_dir ckpts/lsmdc \
  --max_words 32 --max_frames 12 --video_framerate 1 --epochs 5 --batch_size 128 --batch_size_val 128 \
  --lr 1e-4 --coef_lr 1e-3 --warmup_proportion 0.1 --weight_decay 0.2 --workers 8 --n_display 50 --temp 3 --alpha 2 --beta 1e-4 --lambda_dir 0.01 --lambda_epsilon 0.01 --lambda_lower 0.5 "$@"

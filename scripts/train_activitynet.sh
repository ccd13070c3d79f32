#!/usr/bin/env bash
# Train GARE on ActivityNet Captions (paragraph retrieval, delta on the video side), then test the best checkpoint.
#   DATA=/path/to/activitynet NGPU=4 bash scripts/train_activitynet.sh [more flags]
# DATA holds anns/ (annotation files) and videos/ (best re-encoded with
# preprocess/compress_video.py). Outputs go to ckpts/activitynet unless --output_dir is given.
set -euo pipefail
DATA=${DATA:-data/activitynet}
exec "$(dirname "$0")/launch.sh" --do_train 1 --datatype activitynet \
  --anno_path "$DATA/anns" --video_path "$DATA/videos" --output_dir ckpts/activitynet \
  --max_words 64 --max_frames 64 --video_framerate 1 --epochs 10 --batch_size 64 --batch_size_val 64 --delta_side video \
  --lr 1e-4 --coef_lr 1e-3 --warmup_proportion 0.1 --weight_decay 0.2 --workers 8 --n_display 50 --temp 3 --alpha 2 --beta 1e-4 --lambda_dir 0.01 --lambda_epsilon 0.01 --lambda_lower 0.5 "$@"

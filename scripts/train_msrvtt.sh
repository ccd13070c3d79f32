#!/usr/bin/env bash
# Train GARE on MSR-VTT (9k train, 1k-A test), then test the best checkpoint.
#   DATA=/path/to/msrvtt NGPU=4 bash scripts/train_msrvtt.sh [more flags]
# DATA holds anns/ (annotation files) and videos/ (best re-encoded with
# preprocess/compress_video.py). Outputs go to ckpts/msrvtt unless --output_dir is given.
set -euo pipefail
DATA=${DATA:-data/msrvtt}
exec "$(dirname "$0")/launch.sh" --do_train 1 --datatype msrvtt \
  --anno_path "$DATA/anns" --video_path "$DATA/videos" --output_dir ckpts/msrvtt \
  --max_words 32 --max_frames 12 --video_framerate 1 --epochs 5 --batch_size 128 --batch_size_val 128 --eval_every_steps 150 \
  --lr 1e-4 --coef_lr 1e-3 --warmup_proportion 0.1 --weight_decay 0.2 --workers 8 --n_display 50 --temp 3 --alpha 2 --beta 1e-4 --lambda_dir 0.01 --lambda_epsilon 0.01 --lambda_lower 0.5 "$@"

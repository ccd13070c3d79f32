#!/usr/bin/env bash
# Train GARE on MSR-VTT (9k train, 1k-A test), then test the best checkpoint.
#   DATA=/path/to/msrvtt NGPU=4 bash scripts/train_msrvtt.sh [more flags]
# DATA holds anns/ (annotation files) and videos/ (best re-encoded with
# preprocess/compress_video.py). The settings are the recipe 'msrvtt' in tvr/cli/recipes.py; flags
# given here win over it. Outputs go to outputs/msrvtt unless --output_dir is given.
set -euo pipefail
DATA=${DATA:-data/msrvtt}
exec "$(dirname "$0")/launch.sh" --do_train 1 --recipe msrvtt \
  --anno_path "$DATA/anns" --video_path "$DATA/videos" "$@"

#!/usr/bin/env bash
# Train GARE on DiDeMo (paragraph retrieval), then test the best checkpoint.
#   DATA=/path/to/didemo NGPU=4 bash scripts/train_didemo.sh [more flags]
# DATA holds anns/ (annotation files) and videos/ (best re-encoded with
# preprocess/compress_video.py). The settings are the recipe 'didemo' in tvr/cli/recipes.py; flags
# given here win over it. Outputs go to outputs/didemo unless --output_dir is given.
set -euo pipefail
DATA=${DATA:-data/didemo}
exec "$(dirname "$0")/launch.sh" --do_train 1 --recipe didemo \
  --anno_path "$DATA/anns" --video_path "$DATA/videos" "$@"

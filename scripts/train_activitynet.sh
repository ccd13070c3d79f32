#!/usr/bin/env bash
# Train GARE on ActivityNet Captions (paragraph retrieval, delta on the video side), then test the best checkpoint.
#   DATA=/path/to/activitynet NGPU=4 bash scripts/train_activitynet.sh [more flags]
# DATA holds anns/ (annotation files) and videos/ (best re-encoded with
# preprocess/compress_video.py). The settings are the recipe 'activitynet' in tvr/cli/recipes.py; flags
# given here win over it. Outputs go to outputs/activitynet unless --output_dir is given.
set -euo pipefail
DATA=${DATA:-data/activitynet}
exec "$(dirname "$0")/launch.sh" --do_train 1 --recipe activitynet \
  --anno_path "$DATA/anns" --video_path "$DATA/videos" "$@"

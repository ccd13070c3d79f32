#!/usr/bin/env bash
# Train GARE on LSMDC (1k test), then test the best checkpoint.
#   DATA=/path/to/lsmdc NGPU=4 bash scripts/train_lsmdc.sh [more flags]
# DATA holds anns/ (annotation files) and videos/ (best re-encoded with
# preprocess/compress_video.py). The settings are the recipe 'lsmdc' in tvr/cli/recipes.py; flags
# given here win over it. Outputs go to outputs/lsmdc unless --output_dir is given.
set -euo pipefail
DATA=${DATA:-data/lsmdc}
exec "$(dirname "$0")/launch.sh" --do_train 1 --recipe lsmdc \
  --anno_path "$DATA/anns" --video_path "$DATA/videos" "$@"

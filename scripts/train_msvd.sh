#!/usr/bin/env bash
# Train GARE on MSVD (multi-sentence test; no temporal aggregation, as the reference), then test the best checkpoint.
#   DATA=/path/to/msvd NGPU=4 bash scripts/train_msvd.sh [more flags]
# DATA holds anns/ (annotation files) and videos/ (best re-encoded with
# preprocess/compress_video.py). The settings are the recipe 'msvd' in tvr/cli/recipes.py; flags
# given here win over it. Outputs go to outputs/msvd unless --output_dir is given.
set -euo pipefail
DATA=${DATA:-data/msvd}
exec "$(dirname "$0")/launch.sh" --do_train 1 --recipe msvd \
  --anno_path "$DATA/anns" --video_path "$DATA/videos" "$@"

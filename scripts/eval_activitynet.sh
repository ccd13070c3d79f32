#!/usr/bin/env bash
# Evaluate a GARE checkpoint on the ActivityNet Captions (paragraph retrieval, delta on the video side) test split.
#   CKPT=outputs/activitynet/ckpt_best.pt DATA=/path/to/activitynet bash scripts/eval_activitynet.sh [more flags]
# The model is rebuilt from the configuration the checkpoint records; the data settings are
# the recipe 'activitynet' in tvr/cli/recipes.py. Results go to outputs/activitynet_eval unless --output_dir is given.
set -euo pipefail
DATA=${DATA:-data/activitynet}
exec "$(dirname "$0")/launch.sh" --do_eval 1 --recipe activitynet \
  --init_model "${CKPT:-outputs/activitynet/ckpt_best.pt}" \
  --anno_path "$DATA/anns" --video_path "$DATA/videos" --output_dir outputs/activitynet_eval "$@"

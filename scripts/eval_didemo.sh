#!/usr/bin/env bash
# Evaluate a GARE checkpoint on the DiDeMo (paragraph retrieval) test split.
#   CKPT=outputs/didemo/ckpt_best.pt DATA=/path/to/didemo bash scripts/eval_didemo.sh [more flags]
# The model is rebuilt from the configuration the checkpoint records; the data settings are
# the recipe 'didemo' in tvr/cli/recipes.py. Results go to outputs/didemo_eval unless --output_dir is given.
set -euo pipefail
DATA=${DATA:-data/didemo}
exec "$(dirname "$0")/launch.sh" --do_eval 1 --recipe didemo \
  --init_model "${CKPT:-outputs/didemo/ckpt_best.pt}" \
  --anno_path "$DATA/anns" --video_path "$DATA/videos" --output_dir outputs/didemo_eval "$@"

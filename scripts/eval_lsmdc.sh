#!/usr/bin/env bash
# Evaluate a GARE checkpoint on the LSMDC (1k test) test split.
#   CKPT=outputs/lsmdc/ckpt_best.pt DATA=/path/to/lsmdc bash scripts/eval_lsmdc.sh [more flags]
# The model is rebuilt from the configuration the checkpoint records; the data settings are
# the recipe 'lsmdc' in tvr/cli/recipes.py. Results go to outputs/lsmdc_eval unless --output_dir is given.
set -euo pipefail
DATA=${DATA:-data/lsmdc}
exec "$(dirname "$0")/launch.sh" --do_eval 1 --recipe lsmdc \
  --init_model "${CKPT:-outputs/lsmdc/ckpt_best.pt}" \
  --anno_path "$DATA/anns" --video_path "$DATA/videos" --output_dir outputs/lsmdc_eval "$@"

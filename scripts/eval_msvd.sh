#!/usr/bin/env bash
# Evaluate a GARE checkpoint on the MSVD (multi-sentence test; no temporal aggregation, as the reference) test split.
#   CKPT=outputs/msvd/ckpt_best.pt DATA=/path/to/msvd bash scripts/eval_msvd.sh [more flags]
# The model is rebuilt from the configuration the checkpoint records; the data settings are
# the recipe 'msvd' in tvr/cli/recipes.py. Results go to outputs/msvd_eval unless --output_dir is given.
set -euo pipefail
DATA=${DATA:-data/msvd}
exec "$(dirname "$0")/launch.sh" --do_eval 1 --recipe msvd \
  --init_model "${CKPT:-outputs/msvd/ckpt_best.pt}" \
  --anno_path "$DATA/anns" --video_path "$DATA/videos" --output_dir outputs/msvd_eval "$@"

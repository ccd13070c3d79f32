#!/usr/bin/env bash
# Evaluate a GARE checkpoint on the MSR-VTT (9k train, 1k-A test) test split.
#   CKPT=outputs/msrvtt/ckpt_best.pt DATA=/path/to/msrvtt bash scripts/eval_msrvtt.sh [more flags]
# The model is rebuilt from the configuration the checkpoint records; the data settings are
# the recipe 'msrvtt' in tvr/cli/recipes.py. Results go to outputs/msrvtt_eval unless --output_dir is given.
set -euo pipefail
DATA=${DATA:-data/msrvtt}
exec "$(dirname "$0")/launch.sh" --do_eval 1 --recipe msrvtt \
  --init_model "${CKPT:-outputs/msrvtt/ckpt_best.pt}" \
  --anno_path "$DATA/anns" --video_path "$DATA/videos" --output_dir outputs/msrvtt_eval "$@"

#!/usr/bin/env bash
# Launch main_retrieval.py with torchrun on this node (and others): used by the per-dataset
# train_*.sh / eval_*.sh scripts, which add the dataset's flags. Environment:
#   NGPU (GPUs on this node, default: all visible), NNODES (1), NODE_RANK (0),
#   MASTER_ADDR (127.0.0.1), MASTER_PORT (29510).
# Extra command-line arguments are passed on to main_retrieval.py and win over the script's.
# Relative paths are taken from the folder you run the script in. When the run fails, the
# ranks' one-line error is repeated after torchrun's own report, as the last line you see.
set -uo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
NGPU=${NGPU:-$(python -c "import torch; print(max(1, torch.cuda.device_count()))")}
errors=$(mktemp)
trap 'rm -f "$errors"' EXIT
{ torchrun --nproc_per_node="$NGPU" --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${MASTER_PORT:-29510}" \
    "$REPO/main_retrieval.py" "$@" 2>&1 >&3 | tee "$errors" >&2; } 3>&1
status=${PIPESTATUS[0]}
if [ "$status" -ne 0 ]; then
  grep -h "main_retrieval.py: error: " "$errors" | tail -n 1 >&2
fi
exit "$status"

#!/usr/bin/env bash
# Launch main_retrieval.py with torchrun on this node (and others): used by the per-dataset
# train_*.sh / eval_*.sh scripts, which add the dataset's flags. Environment:
#   NGPU (GPUs on this node, default: all visible), NNODES (1), NODE_RANK (0),
#   MASTER_ADDR (127.0.0.1), MASTER_PORT (29510).
# Extra command-line arguments are passed on to main_retrieval.py and win over the script's.
set -euo pipefail
cd "$(dirname "$0")/.."
NGPU=${NGPU:-$(python -c "import torch; print(max(1, torch.cuda.device_count()))")}
exec torchrun --nproc_per_node="$NGPU" --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
  --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${MASTER_PORT:-29510}" \
  main_retrieval.py "$@"

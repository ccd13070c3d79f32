#!/usr/bin/env bash
# Check a dataset folder before any GPU is used: every split's annotations read as a run reads
# them, and each split's videos found by name; what is missing is named with where it is
# published. Exit status 0 when a run has all it needs.
#   bash scripts/check_data.sh DATA [--datatype msrvtt|msvd|lsmdc|activitynet|didemo]
# DATA holds anns/ (annotation files) and videos/; a relative DATA is taken from the folder you
# run this in.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" exec python -m tvr.cli.data_check "$@"

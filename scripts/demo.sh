#!/usr/bin/env bash
# End-to-end demo on a fresh machine (CPU, 2 cores): set up .venv (scripts/setup.sh), train two
# LoRA modules of MiniLM on the label-skewed halves of SST-2, compose them with
# 0.5*s0 + 0.5*s1, and print the three validation accuracies. Outputs in runs/demo/.
# Data: $PEMARITH_DATA_DIR, else ../shared/data. A rerun skips finished modules.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec pemarith demo --data-dir "${PEMARITH_DATA_DIR:-../shared/data}" "$@"

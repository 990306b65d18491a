#!/usr/bin/env bash
# make notebooks [CONF=conf/local.yaml]: execute notebooks/*.ipynb headless on the outputs of
# `make demo` (or of any run: CONF names its config) and write the executed copies, with their
# tables, pictures and audio players, to notebooks/executed/ (not in git). The notebooks in
# notebooks/ stay stripped of outputs (tests/test_notebooks.py checks).
set -euo pipefail
cd "$(dirname "$0")/.."
CONF=${1:-conf/local.yaml}
exec .venv/bin/python -m genrecast.notebook_helpers notebooks/[0-9]*.ipynb --conf "$CONF" --out notebooks/executed

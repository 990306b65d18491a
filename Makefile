# genrecast - see README.md. `make demo` and `make test` each start with `make setup`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
CONF ?= conf/local.yaml
export SPARK_LOCAL_IP ?= 127.0.0.1
# Local jobs run this venv's Python; `make submit` passes on only a PYSPARK_PYTHON of your own
# (cluster nodes have no .venv of this checkout).
USER_PYSPARK_PYTHON := $(PYSPARK_PYTHON)
export PYSPARK_PYTHON := $(CURDIR)/$(PY)

.PHONY: setup test lint demo ingest bench bench-ingest bench-score bench-decode-memory bench-scale bench-recommend-memory bench-train-memory package submit notebooks clean

setup:
	@bash scripts/setup.sh

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check lib jobs tests bench notebooks

ingest: setup
	$(VENV)/bin/genrecast ingest --conf $(CONF)

demo: setup
	@bash scripts/demo.sh $(CONF)

bench: bench-ingest bench-score bench-decode-memory bench-scale bench-recommend-memory bench-train-memory

bench-ingest: setup
	$(PY) bench/ingest.py

# VARIANTS: models scored side by side (bench/score.py --variants; pooled-all adds ~5 min on 2 cores)
VARIANTS ?= cnn,pooled-k3
bench-score: setup
	$(PY) bench/score.py --variants $(VARIANTS)

bench-decode-memory: setup
	$(PY) bench/decode_memory.py

# SIZES=10000,100000 for a quicker run (default 10k, 100k, 1M simulated tracks; ~5 min on 2 cores).
# SPARK_PLAN: sizes of the ingest- and score-planning steps from simulated files, driver lists vs Spark
# (default 10k, 100k: ingest 3.7 min + score ~4 min measured on 2 loaded cores; 1M took ~24 + ~14 min more and
# writes ~1M empty files).
SPARK_PLAN ?= 10000,100000
bench-scale: setup
	$(PY) bench/scale.py --recommend $(if $(SIZES),--sizes $(SIZES)) $(if $(SPARK_PLAN),--spark-plan $(SPARK_PLAN))

# Recommend tasks' memory per Python worker: search arrays as mapped files vs broadcasts (~5 min)
bench-recommend-memory: setup
	$(PY) bench/recommend_memory.py $(if $(SIZES),--sizes $(SIZES))

# SIZES=1,2 for a quicker run (default 1x, 2x, 8x the demo's 200 tracks x 10 clips, this code and
# the code before streaming; ~25 min on 2 loaded cores)
bench-train-memory: setup
	$(PY) bench/train_memory.py $(if $(SIZES),--sizes $(SIZES))

# dist/: the genrecast wheel and genrecast.zip for --py-files (ENV_ARCHIVE=1: a packed venv too).
package: setup
	@bash scripts/package.sh

# make submit JOB=ingest|train|score|recommend CONF=conf/cluster.yaml [ARGS="--mode nightly"]
submit: package
	@CONF=$(CONF) PYSPARK_PYTHON=$(USER_PYSPARK_PYTHON) bash scripts/submit.sh $(JOB) $(ARGS)

notebooks: setup
	@bash scripts/notebooks.sh $(CONF)

clean:
	rm -rf data/genrecast data/genrecast-backbone bench/out

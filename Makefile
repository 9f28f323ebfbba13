# megadrp: every target sets up what it needs; `make demo` and `make test` work on a fresh machine.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
PIP     := $(VPY) -m pip install -q -c constraints-cpu.txt
STAMP   := $(VENV)/.megadrp-setup
CACHE   := .cache
MODEL   := $(CACHE)/models/smollm2-135m
CORPUS  := $(CACHE)/corpus
UNSEEN  := $(CACHE)/corpus_unseen
export OMP_NUM_THREADS ?= 1
export WANDB_MODE ?= offline
export HF_HUB_OFFLINE := 1
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/$(CACHE)/torch_extensions

.PHONY: setup test test-slow demo lint bench corpus corpus-unseen model experiment clean

setup: $(STAMP)
$(STAMP): setup.py constraints-cpu.txt
	@echo "[setup] virtual environment in $(VENV) (CPU torch 2.13.0, pinned by constraints-cpu.txt)"
	@test -x $(VPY) || $(PY) -m venv $(VENV)
	@$(PIP) --upgrade pip >/dev/null
	@$(PIP) torch==2.13.0
	@$(PIP) -e '.[dev,demo,eval]'
	@touch $@
	@echo "[setup] done"

test: setup
	$(VPY) -m pytest -q -m "not slow and not gpu" tests

test-slow: setup model corpus
	$(VPY) -m pytest -q -m "slow and not gpu" tests

lint: setup
	$(VENV)/bin/ruff check megadrp tools tests

model: setup $(MODEL)/config.json
$(MODEL)/config.json:
	$(VPY) tools/convert_smollm2.py --output $(MODEL)

corpus: setup $(CORPUS)/manifest.json
$(CORPUS)/manifest.json:
	$(VPY) tools/build_corpus.py --output $(CORPUS)

# Domains no recipe trains on (configs/unseen_sources.yaml): the comparison's robustness check.
corpus-unseen: setup $(UNSEEN)/manifest.json
$(UNSEEN)/manifest.json: configs/unseen_sources.yaml
	$(VPY) tools/build_corpus.py --sources configs/unseen_sources.yaml --output $(UNSEEN) --max-bytes 200000

demo: setup model corpus
	$(VPY) tools/demo.py --model $(MODEL) --corpus $(CORPUS) --run-dir runs/demo

experiment: setup model corpus corpus-unseen
	$(VPY) tools/experiment.py --budget cpu --model $(MODEL) --corpus $(CORPUS) --unseen-corpus $(UNSEEN) \
		--run-dir runs/experiment

bench: setup
	$(VPY) tools/bench_preprocess.py
	$(VPY) tools/bench_kernels.py
	$(VPY) tools/bench_train.py

clean:
	rm -rf runs build *.egg-info .pytest_cache

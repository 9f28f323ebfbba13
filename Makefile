# megadrp: every target sets up what it needs; `make demo` and `make test` work on a fresh machine.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
LOCK    := requirements-lock.txt
LOCK_VENV := $(CACHE)/lock-venv
STAMP   := $(VENV)/.megadrp-setup
CACHE   := .cache
MODEL   := $(CACHE)/models/smollm2-135m
CORPUS  := $(CACHE)/corpus
UNSEEN  := $(CACHE)/corpus_unseen
export OMP_NUM_THREADS ?= 1
export WANDB_MODE ?= offline
export HF_HUB_OFFLINE := 1
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/$(CACHE)/torch_extensions

.PHONY: setup lock test test-slow demo lint bench corpus corpus-unseen model experiment llama-cpp clean

setup: $(STAMP)
$(STAMP): setup.py $(LOCK)
	@echo "[setup] virtual environment in $(VENV): exactly the tested packages of $(LOCK)"
	@test -x $(VPY) || $(PY) -m venv $(VENV)
	@$(VPY) -m pip install -q -r $(LOCK)
	@$(VPY) -m pip install -q --no-deps -e .
	@$(VPY) -m pip check
	@touch $@
	@echo "[setup] done"

# Deliberate upgrade: a fresh venv with the newest versions setup.py's ranges allow (torch stays at the CPU build
# on disk), the test suite on it, and only if it passes, the new lock. Review `git diff $(LOCK)` and commit.
lock:
	rm -rf $(LOCK_VENV) && $(PY) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q --upgrade pip setuptools
	$(LOCK_VENV)/bin/python -m pip install -q torch==$$(sed -n 's/^torch==//p' $(LOCK))
	$(LOCK_VENV)/bin/python -m pip install -q -e '.[dev,demo,eval]'
	head -3 $(LOCK) > $(LOCK).candidate
	$(LOCK_VENV)/bin/python -m pip freeze --all --exclude-editable | sed 's/+cpu$$//' >> $(LOCK).candidate
	diff $(LOCK) $(LOCK).candidate || true
	$(LOCK_VENV)/bin/python -m pytest -q -m "not slow and not gpu" tests
	mv $(LOCK).candidate $(LOCK)
	@echo "[lock] $(LOCK) updated from the newest allowed versions; the suite passed on them. Run make setup."

test: setup
	$(VPY) -m pytest -q -m "not slow and not gpu" tests

test-slow: setup model corpus
	$(VPY) -m pytest -q -m "slow and not gpu" tests

lint: setup
	$(VENV)/bin/ruff check megadrp experiments tools tests

model: setup $(MODEL)/config.json
$(MODEL)/config.json:
	$(VPY) tools/convert_smollm2.py --output $(MODEL)

corpus: setup $(CORPUS)/manifest.json
$(CORPUS)/manifest.json:
	$(VPY) -m experiments.corpus_build --output $(CORPUS)

# Domains no recipe trains on (configs/unseen_sources.yaml): the comparison's robustness check.
corpus-unseen: setup $(UNSEEN)/manifest.json
$(UNSEEN)/manifest.json: configs/unseen_sources.yaml
	$(VPY) -m experiments.corpus_build --sources configs/unseen_sources.yaml --output $(UNSEEN) --max-bytes 200000

# Where torch sees a GPU: the paper's method (learned masks + DRO, configs/demo_smollm2_gpu.yaml), else the CPU's.
demo: setup model corpus
	$(VPY) -m megadrp run --config $$($(VPY) -c "import torch; print('configs/demo_smollm2_gpu.yaml' \
		if torch.cuda.is_available() else 'configs/demo_smollm2.yaml')")

experiment: setup model corpus corpus-unseen
	$(VPY) tools/experiment.py --budget cpu --model $(MODEL) --corpus $(CORPUS) --unseen-corpus $(UNSEEN) \
		--run-dir runs/experiment

# llama.cpp's check of megadrp's GGUF export: llama-cpp-python has no CPU wheel on PyPI for every platform, so its
# source package is built ONCE (about 16 minutes on 2 cores, at the lowest priority) into $(CACHE)/wheels, then
# installed from there; never part of `make test`.
LLAMA_CPP := 0.3.36
llama-cpp: setup model
	@ls $(CACHE)/wheels/llama_cpp_python-$(LLAMA_CPP)-*.whl >/dev/null 2>&1 || \
		nice -n 19 $(VPY) -m pip wheel --no-deps -w $(CACHE)/wheels llama-cpp-python==$(LLAMA_CPP)
	$(VPY) -m pip install -q $(CACHE)/wheels/llama_cpp_python-$(LLAMA_CPP)-*.whl
	$(VPY) -m pytest -q -m slow tests/export/test_export_gguf_llama_cpp.py

bench: setup
	$(VPY) tools/bench_preprocess.py
	$(VPY) tools/bench_kernels.py
	$(VPY) tools/bench_train.py

clean:
	rm -rf runs build *.egg-info .pytest_cache

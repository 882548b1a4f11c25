# Two commands set everything up on a fresh machine:
#   make demo   - venv + atfnn + the synthetic leave-one-speaker-out demo (prints the results table)
#   make test   - venv + atfnn with its test extras + the test suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of PyTorch on this machine's disk; installed first so that nothing pulls a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
BASE   := $(VENV)/.installed-base
FULL   := $(VENV)/.installed-full
PIP    := $(BIN)/pip install --quiet --disable-pip-version-check

.PHONY: venv demo test bench clean

$(BASE): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) "$(TORCH)"
	$(PIP) -e ".[serve]"
	touch $(BASE)

# Test extras: pytest, httpx and playwright (serve tests), openSMILE (baselines), onnx/onnxruntime (export),
# pytest-benchmark, Ray and Optuna (distributed); the base install already has the serve extra, so `atfnn serve` works after `make demo`.
$(FULL): $(BASE)
	$(PIP) -e ".[serve,test,baselines,export,bench,distributed]"
	touch $(FULL)

venv: $(FULL)

demo: $(BASE)
	$(BIN)/atfnn demo --out runs/demo

test: $(FULL)
	$(BIN)/python -m pytest -q

bench: $(FULL)
	$(BIN)/python benchmarks/run.py --out benchmarks/results

clean:
	rm -rf $(VENV) build *.egg-info

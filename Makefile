# Every target is self-sufficient on a fresh machine: it creates .venv and installs what it needs.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip -q --disable-pip-version-check
STAMP := $(VENV)/.installed
export PIP_CONSTRAINT :=
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.arm-cache/torch_extensions
# Prefect's ephemeral API server gets 20 s to start by default: too little on a busy 2-core box.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export BENTOML_DO_NOT_TRACK ?= true

.PHONY: install test test-fast demo bench clean

install: $(STAMP)

# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -c constraints.txt -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" -n 2 --dist loadgroup

demo: $(STAMP)
	$(VENV)/bin/arm demo

bench: $(STAMP)
	$(PY) benchmarks/curate.py
	$(PY) benchmarks/serve.py

clean:
	rm -rf $(VENV) .arm-cache

# The two commands a fresh machine needs: `make demo` (the main job, end to end) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch first, pinned to the small CPU build from PyTorch's CPU index (on Linux, PyPI's torch is
	# the multi-GB CUDA build; 2.13.0+cpu sorts above 2.13.0, so pip takes the CPU wheel). Where that
	# index cannot be reached, pip retries once per name and falls back to its own index.
	$(PIP) install --quiet --retries 1 --timeout 10 --extra-index-url $(TORCH_CPU_INDEX) torch==2.13.0
	$(PIP) install --quiet -e '.[station,train,dev,camera,ouster,iwr6843,csi]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) deploy/demo.py

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m runtime bench

clean:
	rm -rf $(VENV) runs data .pytest_cache .ruff_cache

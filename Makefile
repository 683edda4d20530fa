# The two commands a fresh machine needs: `make demo` (the main job, end to end) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: install demo test lint bench clean rehab-model

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
	# two workers, each taking whole test modules (--dist loadscope): a module's servers and fixtures
	# start once, and the pages of tests/test_docs.py, which use the documented default ports, run one
	# at a time; most of the suite waits on processes and sockets, so two workers fit two cores
	$(PY) -m pytest -q -n 2 --dist loadscope --durations=15

bench: $(STAMP)
	$(PY) -m runtime bench

# The rehabilitation model of docs/rehab.md: P2, cross-subject S2, the `rehab` preset, on the generated
# study dataset (made first if it is not there: 23 minutes, 11 GB). Training takes about two hours on two
# busy cores and resumes where it stopped. REHAB_DATA and REHAB_RUN say where.
REHAB_DATA ?= data/mmfi-study
REHAB_RUN  ?= runs/rehab
rehab-model: $(STAMP)
	test -f $(REHAB_DATA)/E04/S36/A26/ground_truth.npy || $(PY) -m sensors simulate --preset bench \
	  --actions A01,A02,A03,A04,A05,A06,A07,A08,A09,A10,A11,A12,A13,A14,A15,A16,A17,A18,A19,A20,A21,A22,A23,A24,A25,A26,A27 \
	  --out $(REHAB_DATA) --seed 0 --workers 2 --no-progress
	$(PY) -m training fit --preset rehab --data $(REHAB_DATA) --out $(REHAB_RUN)/train --resume --no-progress
	$(PY) -m training export --checkpoint $(REHAB_RUN)/train/best.pt --out $(REHAB_RUN)/rehab.onnx

clean:
	rm -rf $(VENV) runs data .pytest_cache .ruff_cache

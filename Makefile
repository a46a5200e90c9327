# megatron_align — set-up, tests, demo. `make test` and `make demo` create .venv when it is missing.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
PIP := $(VPY) -m pip
# Torch goes in first, from this spec (clusters: TORCH_SPEC="torch==2.6.0" or a CUDA index via PIP_EXTRA_INDEX_URL).
TORCH_SPEC ?= torch==2.13.0
# Everything after torch is installed against a constraint pinning the torch that is there,
# so no resolver can swap it for a (several-GB) CUDA build.
CONSTRAINTS := $(VENV)/constraints.txt
EXT_SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cuh' -o -name '*.cu' 2>/dev/null)
PYTEST_ARGS ?=
NVCC ?= nvcc
NVCC_ARCHS ?= 90 80
# The extension is built in place with the venv's torch (setuptools' editable install re-runs the build
# in an isolated environment without torch, which would silently skip it), then must import.
BUILD_EXT = MAX_JOBS=$${MAX_JOBS:-2} $(VPY) setup.py -q build_ext --inplace && \
	$(VPY) -c "import torch, megatron_align._C; print('megatron_align._C built')"

.PHONY: setup build test test-fast demo nvcc-check bench clean help

help:
	@echo "make setup       create $(VENV): torch ($(TORCH_SPEC)) first, then megatron_align with pinned deps"
	@echo "make test        set up if needed, build the extension, nvcc compile check, run the test suite"
	@echo "make demo        set up if needed, run the main job on the tiny bundled default on CPU"
	@echo "make nvcc-check  compile every csrc .cu for sm_$(firstword $(NVCC_ARCHS)) and the other NVCC_ARCHS (no GPU needed)"
	@echo "make bench       kernel micro-benchmarks (small shapes on CPU)"

$(VENV)/.installed: setup.py
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(PIP) install -q "$(TORCH_SPEC)"
	$(VPY) -c 'import torch; print("torch==" + torch.__version__)' > $(CONSTRAINTS)
	$(PIP) install -q -c $(CONSTRAINTS) "setuptools>=68" wheel "pybind11>=2.12" ninja
	$(PIP) install -q -c $(CONSTRAINTS) --no-build-isolation -e ".[test]"
	$(BUILD_EXT)
	touch $@
	touch $(VENV)/.ext-built

setup: $(VENV)/.installed

# Rebuild the extension in place whenever a csrc file changes.
$(VENV)/.ext-built: $(VENV)/.installed $(EXT_SOURCES)
	@if [ -f $@ ] && [ -z "$$(find csrc setup.py -newer $@ 2>/dev/null)" ]; then touch $@; \
	else $(BUILD_EXT) && touch $@; fi

build: $(VENV)/.ext-built

nvcc-check:
	@if command -v $(NVCC) >/dev/null 2>&1; then \
	  PY=$(VPY) bash tools/nvcc_check.sh $(NVCC) $(NVCC_ARCHS); \
	else echo "nvcc-check: nvcc not on PATH, skipped"; fi

test: build nvcc-check
	$(VPY) -m pytest tests $(PYTEST_ARGS)

test-fast: build
	$(VPY) -m pytest tests -m "not slow" $(PYTEST_ARGS)

demo: build
	$(VPY) -m megatron_align demo

bench: build
	$(VPY) tools/bench/run_all.py

clean:
	rm -rf build *.egg-info megatron_align/_C*.so

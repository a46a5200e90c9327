# megatron_align — set-up, tests, demo. `make test` and `make demo` create .venv when it is missing.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
PIP := $(VPY) -m pip
# Torch goes in first, from this spec (clusters: TORCH_SPEC="torch==2.6.0" or a CUDA index via PIP_EXTRA_INDEX_URL).
# TORCH_SPEC= (empty) or TORCH_SPEC=skip keeps the torch already in $(VENV) (a container's torch: add
# VENV_ARGS=--system-site-packages so the venv sees it).
TORCH_SPEC ?= torch==2.13.0
VENV_ARGS ?=
# TORCH_WHEELHOUSE=DIR: install torch and its libraries from DIR, downloading them there first when missing;
# pip's own cache keeps nothing from a mirror that sends no cache headers (this machine's).
TORCH_WHEELHOUSE ?=
# megatron-core: empty lets setup.py's bound choose; the compat lane names its version.
MCORE_SPEC ?=
# Everything after torch is installed against a constraint pinning the torch that is there (its installed
# distribution's version, tools/torch_constraint.py), so no resolver can swap it for a (several-GB) CUDA build.
CONSTRAINTS := $(VENV)/constraints.txt
EXT_SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cuh' -o -name '*.cu' 2>/dev/null)
PYTEST_ARGS ?=
NVCC ?= nvcc
NVCC_ARCHS ?= 90 80
# The extension is built in place with the venv's torch (setuptools' editable install re-runs the build
# in an isolated environment without torch, which would silently skip it), then must import.
BUILD_EXT = MAX_JOBS=$${MAX_JOBS:-2} $(VPY) setup.py -q build_ext --inplace && \
	$(VPY) -c "import torch, megatron_align._C; print('megatron_align._C built')"

# The compat lane: the stack users run (Python 3.12, PyPI's CUDA build of torch, the newest megatron-core
# setup.py allows), in its own venv, running the tests marked `compat` (tests/conftest.py: COMPAT_PATHS).
COMPAT_PY ?= $(firstword $(foreach p,python3.12 $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12),\
	$(shell $(p) -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1 && echo $(p))))
COMPAT_VENV ?= .venv-compat
COMPAT_TORCH_SPEC ?= torch==2.14.1
COMPAT_MCORE_SPEC ?= megatron-core==0.19.2
COMPAT_WHEELHOUSE ?= $(HOME)/.cache/megatron_align/wheels
COMPAT_PYTEST_ARGS ?=

.PHONY: setup build test test-fast test-compat setup-compat demo nvcc-check bench clean help

help:
	@echo "make setup       create $(VENV): torch ($(TORCH_SPEC)) first, then megatron_align with pinned deps"
	@echo "make test        set up if needed, build the extension, nvcc compile check, run the test suite"
	@echo "make test-compat Python 3.12 + $(COMPAT_TORCH_SPEC) (PyPI CUDA build) + $(COMPAT_MCORE_SPEC) in $(COMPAT_VENV): the megatron tests"
	@echo "make demo        set up if needed, run the main job on the tiny bundled default on CPU"
	@echo "make nvcc-check  compile every csrc .cu for sm_$(firstword $(NVCC_ARCHS)) and the other NVCC_ARCHS (no GPU needed)"
	@echo "make bench       kernel micro-benchmarks (small shapes on CPU)"

$(VENV)/.installed: setup.py
	test -x $(VPY) || $(PY) -m venv $(VENV_ARGS) $(VENV)
	@if [ -z "$(strip $(TORCH_SPEC))" ] || [ "$(strip $(TORCH_SPEC))" = skip ]; then \
	  echo "TORCH_SPEC=$(TORCH_SPEC): keeping the installed torch"; \
	elif [ -n "$(TORCH_WHEELHOUSE)" ]; then \
	  set -x; $(PIP) install -q --no-index --find-links "$(TORCH_WHEELHOUSE)" "$(TORCH_SPEC)" 2>/dev/null || \
	  { $(PIP) download -q -d "$(TORCH_WHEELHOUSE)" "$(TORCH_SPEC)" && \
	    $(PIP) install -q --no-index --find-links "$(TORCH_WHEELHOUSE)" "$(TORCH_SPEC)"; }; \
	else set -x; $(PIP) install -q "$(TORCH_SPEC)"; fi
	$(VPY) tools/torch_constraint.py > $(CONSTRAINTS)
	@echo "pinned: $$(cat $(CONSTRAINTS))"
	$(PIP) install -q -c $(CONSTRAINTS) "setuptools>=68" wheel "pybind11>=2.12" ninja
	$(if $(strip $(MCORE_SPEC)),$(PIP) install -q -c $(CONSTRAINTS) "$(MCORE_SPEC)")
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

# A second venv, built with this same recipe; CUDA kernels are compiled by nvcc-check and on the GPU machine,
# so here only the CPU sources are built against the CUDA torch.
setup-compat:
	@test -n "$(COMPAT_PY)" || { echo "test-compat: no Python 3.12 found (set COMPAT_PY=/path/to/python3.12)"; exit 2; }
	MEGATRON_ALIGN_SKIP_CUDA=1 $(MAKE) --no-print-directory build VENV=$(COMPAT_VENV) PY=$(COMPAT_PY) \
	  TORCH_SPEC="$(COMPAT_TORCH_SPEC)" MCORE_SPEC="$(COMPAT_MCORE_SPEC)" TORCH_WHEELHOUSE="$(COMPAT_WHEELHOUSE)"

test-compat: setup-compat
	$(COMPAT_VENV)/bin/python -m megatron_align info
	$(COMPAT_VENV)/bin/python -m pytest tests -m compat $(COMPAT_PYTEST_ARGS)

demo: build
	$(VPY) -m megatron_align demo

bench: build
	$(VPY) tools/bench/run_all.py

clean:
	rm -rf build *.egg-info megatron_align/_C*.so

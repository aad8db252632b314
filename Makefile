# make test   : create .venv with the pinned dependencies, run the test suite
# make bench  : same set-up, then the benchmark (the main job); FULL=1 for all of it
#
# On a machine with its own torch (a GPU box, no package registry):
#   make test PYTHON=python3 VENV=       (no venv, no installs)
PYTHON ?= python3
VENV ?= .venv
FULL ?= 0

ifeq ($(strip $(VENV)),)
PY := $(PYTHON)
SETUP :=
else
PY := $(VENV)/bin/python
SETUP := $(VENV)/.installed
endif

# Two workers (pytest-xdist, pinned in the venv); none with a foreign python.
PYTEST_ARGS ?= $(if $(strip $(VENV)),-n 2,)

.PHONY: test bench clean

$(VENV)/.installed: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet -r requirements-dev.txt
	touch $@

# The second command re-runs the emulated CUDA kernels under AddressSanitizer
# (tests/run_cuda_asan.py; it skips where a GPU is present).
test: $(SETUP)
	$(PY) -m pytest $(PYTEST_ARGS)
	$(PY) tests/run_cuda_asan.py $(PYTEST_ARGS)

# CPU timing: glibc's malloc never mmaps (MALLOC_MMAP_MAX_=0) nor trims the heap, so
# that large tensors are reused from the heap instead of mmap'd afresh, page faults
# and all, at every allocation. (A fixed MALLOC_MMAP_THRESHOLD_ can be at most 32 MiB:
# at 131072 x 128 fp32 both the cpp op and eager took twice as long with it.)
bench: $(SETUP)
	MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1073741824 \
	  $(PY) -m bench.run $(if $(filter 1,$(FULL)),--full,)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

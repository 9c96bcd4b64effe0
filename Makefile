# fullbatch: the two entry points of the README, plus what they need.
#   make figures   draw every figure into figures/ (the main job)
#   make test      run every test (the burn tests in release, with the `burn` feature)
#   make bench     the side-by-side benches against JAX (installs JAX from PyPI when missing)
#   make test-tch  the LibTorch backend's tests (installs torch 2.11 from PyPI into .deps/ first)
#   make gpu-bundle  build the CUDA and LibTorch binaries and pack them for a GPU machine
#   make reproduce DATA=DIR [DEVICES=0,1] [BACKEND=tch|cuda|cpu] [RUNS=runs] [ARGS=...]
#                  the paper's CIFAR-10 tables as one job (docs/reproduction.md)
# Both first install the Debian packages the project needs when they are missing.

SHELL := /bin/bash
DEB_PACKAGES := libopenblas-dev dataset-fashion-mnist
TEST_DEB_PACKAGES := python3-torch
CARGO ?= cargo
PYTHON ?= python3
JAX_VERSION := 0.10.2

.PHONY: figures test test-tch gpu-bundle reproduce deps test-deps bench bench-deps check-models print-burn-tests

# Installs the Debian packages of $(1) that are missing (as root; otherwise says how).
define install_missing
	@missing=""; \
	for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" -eq 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else \
	    echo "error: missing Debian packages:$$missing" >&2; \
	    echo "install them with: sudo apt-get install$$missing" >&2; \
	    exit 1; \
	  fi; \
	fi
endef

deps:
	$(call install_missing,$(DEB_PACKAGES))

# The tests also check the network Hessian against PyTorch (scripts/check_network_export.py).
test-deps:
	$(call install_missing,$(TEST_DEB_PACKAGES))

figures: deps
	$(CARGO) run --release --bin figures

# The burn tests: every tests/*.rs that starts with #![cfg(feature = "burn")] (found, not listed).
BURN_TESTS := $(patsubst tests/%.rs,--test %,$(shell grep -l '^\#!\[cfg(feature = "burn")\]' tests/*.rs))

test: deps test-deps
	$(CARGO) test --doc
	$(CARGO) test --all-targets
	# burn's kernels compile in this crate: its tests run in release (debug is ~100x slower).
	$(CARGO) test --release --features burn --lib $(BURN_TESTS)
	# Data-parallel steps (burn's collective all-reduce, two and three CPU threads as devices).
	$(CARGO) test --release --features collective --test parallel

check-models: deps
	$(CARGO) run --release --bin fullbatch -- models

# The side-by-side benches compare with JAX (jit, f64, CPU) and scipy's eigsh: installed from PyPI
# into $(PYTHON)'s environment when missing (the version the recorded results used).
bench-deps:
	@$(PYTHON) -c 'import jax, scipy' 2>/dev/null || { \
	  echo "installing jax[cpu]==$(JAX_VERSION) and scipy from PyPI into $$($(PYTHON) -c 'import sys; print(sys.prefix)')"; \
	  $(PYTHON) -m pip install --quiet "jax[cpu]==$(JAX_VERSION)" scipy; }

bench: deps bench-deps
	PYTHON=$(PYTHON) bash benches/side_by_side.sh

# burn's LibTorch backend: libtorch 2.11 from the torch wheel (scripts/libtorch.sh), own target dir.
test-tch: deps
	source scripts/libtorch.sh && CARGO_TARGET_DIR=target-tch $(CARGO) test --release --features tch --test tch -- --nocapture

gpu-bundle: deps
	bash scripts/gpu-bundle.sh

# `fullbatch reproduce` built for BACKEND: tch (LibTorch, the fastest on a GPU; scripts/libtorch.sh
# installs libtorch first), cuda (burn's CUDA backend) or cpu (burn's Flex).
DATA ?= $(FULLBATCH_CIFAR10)
DEVICES ?= 0
BACKEND ?= tch
RUNS ?= runs
REPRODUCE_ARGS = reproduce --backend $(BACKEND) --devices $(DEVICES) --runs $(RUNS) $(if $(DATA),--data $(DATA)) $(ARGS)
reproduce: deps
	@case "$(BACKEND)" in \
	  tch) source scripts/libtorch.sh && CARGO_TARGET_DIR=target-tch $(CARGO) run --release --features tch --bin fullbatch -- $(REPRODUCE_ARGS) ;; \
	  cuda) CUDARC_CUDA_VERSION=13000 CARGO_TARGET_DIR=target-cuda $(CARGO) run --release --features cuda --bin fullbatch -- $(REPRODUCE_ARGS) ;; \
	  cpu) $(CARGO) run --release --features burn --bin fullbatch -- $(REPRODUCE_ARGS) ;; \
	  *) echo "error: BACKEND=$(BACKEND): one of tch, cuda, cpu" >&2; exit 2 ;; \
	esac

print-burn-tests:
	@echo $(BURN_TESTS)

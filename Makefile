# fullbatch: the two entry points of the README, plus what they need.
#   make figures   draw every figure into figures/ (the main job)
#   make test      run every test (the burn tests in release, with the `burn` feature)
#   make test-tch  the LibTorch backend's tests (installs torch 2.11 from PyPI into .deps/ first)
#   make gpu-bundle  build the CUDA and LibTorch binaries and pack them for a GPU machine
# Both first install the Debian packages the project needs when they are missing.

SHELL := /bin/bash
DEB_PACKAGES := libopenblas-dev dataset-fashion-mnist
CARGO ?= cargo

.PHONY: figures test test-tch gpu-bundle deps bench check-models print-burn-tests

deps:
	@missing=""; \
	for p in $(DEB_PACKAGES); do \
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

figures: deps
	$(CARGO) run --release --bin figures

# The burn tests: every tests/*.rs that starts with #![cfg(feature = "burn")] (found, not listed).
BURN_TESTS := $(patsubst tests/%.rs,--test %,$(shell grep -l '^\#!\[cfg(feature = "burn")\]' tests/*.rs))

test: deps
	$(CARGO) test --doc
	$(CARGO) test --all-targets
	# burn's kernels compile in this crate: its tests run in release (debug is ~100x slower).
	$(CARGO) test --release --features burn --lib $(BURN_TESTS)

check-models: deps
	$(CARGO) run --release --bin fullbatch -- models

bench: deps
	bash benches/side_by_side.sh

# burn's LibTorch backend: libtorch 2.11 from the torch wheel (scripts/libtorch.sh), own target dir.
test-tch: deps
	source scripts/libtorch.sh && CARGO_TARGET_DIR=target-tch $(CARGO) test --release --features tch --test tch -- --nocapture

gpu-bundle: deps
	bash scripts/gpu-bundle.sh

print-burn-tests:
	@echo $(BURN_TESTS)

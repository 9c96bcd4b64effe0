# fullbatch: the two entry points of the README, plus what they need.
#   make figures   draw every figure into figures/ (the main job)
#   make test      run every test (the burn tests in release, with the `burn` feature)
# Both first install the Debian packages the project needs when they are missing.

SHELL := /bin/bash
DEB_PACKAGES := libopenblas-dev dataset-fashion-mnist
CARGO ?= cargo

.PHONY: figures test deps bench check-models

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

test: deps
	$(CARGO) test --doc
	$(CARGO) test --all-targets
	# burn's kernels compile in this crate: its tests run in release (debug is ~100x slower).
	$(CARGO) test --release --features burn --test deep --test train --test deep_sharpness

check-models: deps
	$(CARGO) run --release --bin fullbatch -- models

bench: deps
	bash benches/side_by_side.sh

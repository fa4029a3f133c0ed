# Two entry points (see README): `make run` starts the app on the offline default,
# `make test` runs the whole test suite. Both set up the virtual environment first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test setup browser bench clean-cache

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt requirements-scale.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	$(BIN)/python -m data.pediatric  # real example films, fetched at set-up (never by the app)
	touch $(STAMP)

# Headless Chromium for the browser test, from Debian's packages (never a browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; }

run: setup
	GRADIO_ANALYTICS_ENABLED=False $(BIN)/python app.py

# The offline demo (data -> head -> index) is built first, with progress bars, so the suite's
# end-to-end tests find it ready (a no-op when already built).
test: setup browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pipeline
	HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False $(BIN)/python -m pytest

# make bench BENCH_ARGS=--with-1m adds the 1M x 512 search case (its tuned ef, build time, peak memory)
bench: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench $(BENCH_ARGS)

clean-cache:
	rm -rf .cache

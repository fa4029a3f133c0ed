# Two entry points (see README): `make run` starts the app on the offline default,
# `make test` runs the whole test suite. Both set up the virtual environment first.
PYTHON ?= $(shell command -v python3.11 || echo python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test setup browser orthanc bench clean-cache

setup: $(STAMP)

# uv installs the same requirements from the same sources as pip (bench/pip_sources.py passes pip's config),
# hard-linked from its cache of unpacked wheels: seconds on a second clone instead of pip's minutes.
# --compile-bytecode writes the .pyc files once, as pip does: where PYTHONDONTWRITEBYTECODE is set (or the venv
# is read-only) every cold process would otherwise compile torch, gradio and the rest from source again.
$(STAMP): requirements.txt requirements-dev.txt requirements-scale.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null || { echo "make: this project needs Python 3.11 (found: $$($(PYTHON) --version 2>/dev/null || echo "no $(PYTHON)")): install it (apt-get install python3.11-venv, or pyenv install 3.11) and run make again, or point make at it: make run PYTHON=/path/to/python3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip uv==0.13.8
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python $$($(BIN)/python -m bench.pip_sources) -r requirements-dev.txt
	$(BIN)/python -m data.pediatric  # real example films, fetched at set-up (never by the app)
	touch $(STAMP)

# Headless Chromium for the browser test, from Debian's packages (never a browser download).
# Without root, one line says what to do; NO_BROWSER=1 leaves the browser tests out.
browser:
	@command -v chromium >/dev/null 2>&1 || [ -n "$(NO_BROWSER)" ] || { [ "$$(id -u)" = 0 ] || { echo "make test: headless Chromium is missing and installing it needs root: run 'sudo apt-get install -y chromium chromium-driver' once, or 'make test NO_BROWSER=1' to leave out the browser tests" >&2; exit 1; }; apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; }

# Orthanc and its DICOMweb plugin for the PACS tests (tests/test_pacs.py starts its own server), same way.
orthanc:
	@{ command -v Orthanc >/dev/null 2>&1 && ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so* >/dev/null 2>&1; } || \
		{ apt-get update -qq && apt-get install -y -qq orthanc orthanc-dicomweb >/dev/null; }

run: setup
	GRADIO_ANALYTICS_ENABLED=False $(BIN)/python app.py

# The offline demo (data -> head -> index) is built first, with progress bars, so the suite's
# end-to-end tests find it ready (a no-op when already built). The tests run on TEST_WORKERS pytest-xdist
# workers, a test module to a worker (tests/xdist_plan.py); TEST_WORKERS=0 runs them in this one process.
TEST_WORKERS ?= 2
test: setup browser orthanc
	HF_HUB_OFFLINE=1 $(BIN)/python -m pipeline
	HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadscope --durations=25 $(if $(NO_BROWSER),-m "not browser")

# make bench BENCH_ARGS=--with-1m adds the 1M x 512 search case (its tuned ef, build time, peak memory)
bench: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench $(BENCH_ARGS)

clean-cache:
	rm -rf .cache

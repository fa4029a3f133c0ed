# Two entry points (see README): `make run` starts the app on the offline default,
# `make test` runs the whole test suite. Both set up the virtual environment first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test setup browser orthanc bench clean-cache

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

# Orthanc and its DICOMweb plugin for the PACS tests (tests/test_pacs.py starts its own server), same way.
orthanc:
	@{ command -v Orthanc >/dev/null 2>&1 && ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so* >/dev/null 2>&1; } || \
		{ apt-get update -qq && apt-get install -y -qq orthanc orthanc-dicomweb >/dev/null; }

run: setup
	GRADIO_ANALYTICS_ENABLED=False $(BIN)/python app.py

# The offline demo (data -> head -> index) is built first, with progress bars, so the suite's
# end-to-end tests find it ready (a no-op when already built).
test: setup browser orthanc
	HF_HUB_OFFLINE=1 $(BIN)/python -m pipeline
	HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False $(BIN)/python -m pytest

bench: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench

clean-cache:
	rm -rf .cache

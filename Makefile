# Two commands do all the set-up on a fresh machine (Python 3.11, no GPU, no hub access):
#   make run    install into .venv, then run the smoke sweep on the embedded defaults
#   make test   install into .venv, then run the tests
# Task data is imported from $(MERA_DATA_SOURCE) (a directory in the uniform layout) or,
# when that is "hub", downloaded from the Hugging Face hub.
PYTHON ?= python3
VENV ?= .venv
CONFIG ?= configs/smoke.yaml
export MERA_DATA_SOURCE ?= $(if $(wildcard ../shared/data/index.json),$(abspath ../shared/data),hub)
BIN := $(VENV)/bin

.PHONY: install run test repro ui screenshot
install: $(VENV)/.installed

# torch first, from the CPU wheel; the constraints file pins the whole stack (pip check: clean)
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	$(BIN)/pip check
	touch $@

run: install
	$(BIN)/mera run --config $(CONFIG)

# the linter first (pyproject's [tool.ruff]); pytest's exit 5 (no test collected) is a failure here, not a pass
test: install
	$(BIN)/ruff check .
	$(BIN)/pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

repro: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

ui: install
	$(BIN)/mera ui --config $(CONFIG)

# look at the HTML report as a person would: headless Chromium (Debian package `chromium`)
NAME ?= $(basename $(notdir $(CONFIG)))
screenshot:
	chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
	  --disable-background-networking --disable-component-update --disable-sync \
	  --user-data-dir=$$(mktemp -d) --window-size=1200,3000 \
	  --screenshot=$(abspath reports/$(NAME)/report.png) file://$(abspath reports/$(NAME)/report.html)

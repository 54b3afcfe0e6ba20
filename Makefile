# `make demo` and `make test` do all set-up on a fresh machine (a virtualenv in .venv).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/wattledger demo

test: $(STAMP)
	./scripts/services.sh
	$(BIN)/python -m pytest

# The quick benchmarks (~5 minutes on 2 cores) against the `bench` database, which they rebuild:
# load (issue 8) and ingest vs COPY (issue 9); figures in docs/benchmarks.md. The rest (accuracy,
# sampler-cost, query at 1,000 GPUs, scale-out, alibaba-replay): `$(BIN)/python -m bench --help`.
bench: $(STAMP)
	./scripts/services.sh
	psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'bench'" | grep -q 1 \
		|| createdb -h 127.0.0.1 -U postgres bench
	$(BIN)/python -m bench api-load --requests 5000 --concurrency 16 --duration-s 30
	$(BIN)/python -m bench ingest-load --rate-readings-s 1500 --duration-s 30 --workers 2
	$(BIN)/python -m bench ingest-vs-copy --workers 2 --readings 192000 --batch-readings 2400

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .wattledger .pytest_cache

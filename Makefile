# Two commands a newcomer needs: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint bench bench-http bench-spine bench-webhooks bench-output bench-ranges bench-stores bench-overload bench-metrics bench-nodeloss bench-livejobs bench-fanout services services-stop clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: install
	$(BIN)/aos serve

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict storage actors serve_app cluster

# Both benchmarks, HTTP throughput first (bench/README.md); BENCH_ARGS=--quick for short runs.
bench: bench-http bench-spine

bench-http: install
	$(BIN)/python bench/http.py $(BENCH_ARGS)

bench-spine: install
	$(BIN)/python bench/spine.py $(BENCH_ARGS)

# Webhook delivery: the dispatcher against a bare aiohttp loop, and end to end (bench/README.md).
bench-webhooks: install
	$(BIN)/python bench/webhooks.py $(BENCH_ARGS)

# Big outputs through the service (1 and 10 GiB; BENCH_ARGS=--quick: 0.25 GiB), and Range
# reads and content codings on a store (bench/README.md).
bench-output: install
	$(BIN)/python bench/output.py $(BENCH_ARGS)

bench-ranges: install
	$(BIN)/python bench/ranges.py $(BENCH_ARGS)

# A flood of 512 concurrent submitters (BENCH_ARGS=--connections N): what is answered, how
# fast, the memory it takes, a submit right after; beside 16 submitters and a no-op app.
bench-overload: install
	$(BIN)/python bench/overload.py $(BENCH_ARGS)
# A worker node SIGKILLed on a three-node `ray start` cluster on loopback while a producer
# appends: gap, acknowledged appends lost, time until the shard serves again (bench/README.md).
bench-nodeloss: install
	$(BIN)/python bench/nodeloss.py $(BENCH_ARGS)
# 10,000 SSE streams (BENCH_ARGS: --streams N --jobs J --appends M, or --quick): memory per
# stream in the replicas, shard watches held, append-to-stream latency (bench/README.md).
bench-fanout: install
	$(BIN)/python bench/fanout.py $(BENCH_ARGS)

# Each store backend's group commits/s, appends/s with 32 writers, rows per commit (make services first).
bench-stores: install
	$(BIN)/python bench/stores.py $(BENCH_ARGS)

# What the request metrics cost: wrk on a hot route with them and without, as a ratio.
bench-metrics: install
	$(BIN)/python bench/metrics.py $(BENCH_ARGS)
# 1M Running jobs: bytes per live job in the shard actors, one shard's and the whole service's
# restart (bench/README.md); BENCH_ARGS="--jobs 200000" for a shorter run.
bench-livejobs: install
	$(BIN)/python bench/livejobs.py $(BENCH_ARGS)

# Every server the full suite uses (PostgreSQL, MariaDB, DynamoDB on moto, MongoDB on FerretDB,
# Cassandra), under .services/; one "<name> <url>" line each on stdout. See .ci/services.
services:
	@bash .ci/services start

# Stops only what `make services` started (by its PID files).
services-stop:
	@bash .ci/services stop

clean:
	rm -rf $(VENV) aos-data

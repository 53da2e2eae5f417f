# moonpipe: `make serve` runs the server on this machine, `make test` runs every check.
# Both create .venv (Python 3.11) and install the pinned dependencies on first use; a
# stamp file makes later runs skip the installs until a requirements file changes.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.moonpipe-installed
REQUIREMENTS := requirements.txt $(wildcard requirements-deploy.txt requirements-test.txt)
NODEPS_REQUIREMENTS := $(wildcard requirements-nodeps.txt)
PROJECTS := pyproject.toml $(wildcard client/pyproject.toml) $(wildcard gateway/pyproject.toml)

# `make serve CHECKPOINT=/path/to/dir` (or MOONPIPE_CHECKPOINT=...) serves that checkpoint;
# by default a synthetic tiny checkpoint is made in checkpoints/tiny.
CHECKPOINT ?= $(MOONPIPE_CHECKPOINT)
# `make serve PARAMS="max_batch_size=16 device=cpu"`: config.pbtxt parameters (--param each).
PARAMS ?=
HTTP_PORT ?= 8000
GRPC_PORT ?= 8001
METRICS_PORT ?= 8002
GATEWAY_PORT ?= 2020
PYTEST_ARGS ?=

.PHONY: setup serve test test-fast lint typecheck clean

setup: $(STAMP)

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "moonpipe needs Python 3.11 (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip setuptools wheel

$(STAMP): $(REQUIREMENTS) $(NODEPS_REQUIREMENTS) $(PROJECTS) | $(PY)
	$(PY) -m pip install $(addprefix -r ,$(REQUIREMENTS))
	$(if $(NODEPS_REQUIREMENTS),$(PY) -m pip install --no-deps $(addprefix -r ,$(NODEPS_REQUIREMENTS)))
	$(PY) -m pip install -e . $(if $(wildcard client/pyproject.toml),-e client) $(if $(wildcard gateway/pyproject.toml),-e gateway)
	$(PY) -c 'from moonpipe.triton_local import prepare_stub; print("backend stub:", prepare_stub())'
	@touch $@

serve: setup
	$(PY) -m moonpipe.cli serve $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) \
		--http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT) \
		--gateway-port $(GATEWAY_PORT) $(addprefix --param ,$(PARAMS))

RUFF := $(VENV)/bin/ruff check .
MYPY := $(VENV)/bin/mypy moonpipe model_repository/moondream/1 $(wildcard client/moonpipe_client) $(wildcard gateway/moonpipe_gateway) tests

lint: setup
	$(RUFF)

typecheck: setup
	$(MYPY)

# All three run even when one fails, so one run shows every problem; any failure fails.
test: setup
	@status=0; \
	echo "== ruff"; $(RUFF) || status=1; \
	echo "== mypy"; $(MYPY) || status=1; \
	echo "== pytest"; $(VENV)/bin/pytest $(PYTEST_ARGS) || status=1; \
	exit $$status

test-fast: setup
	$(VENV)/bin/pytest -m "not e2e and not reliability and not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# `make bench`: the CPU benchmarks on the tiny model (about 6 minutes on 2 cores); each writes
# JSON + PNG under bench/out/ (untracked; docs/bench.md explains the columns).
# `make bench BENCH_FLAGS=--update-results` writes into bench/results/, the committed results.
# perf_analyzer and the GPU run are separate commands (docs/bench.md).
BENCH_PIPELINE_ARGS ?= --streams 1,8,32
BENCH_TRITON_ARGS ?= --streams 1,8 --requests 32 --tokens 32
BENCH_SHORT_ARGS ?= --concurrency 1,16 --requests 16
BENCH_FLAGS ?=

.PHONY: bench

bench: setup
	@echo "== [1/3] moonpipe bench pipeline (blocking vs pipelined decode) =="
	$(PY) -m moonpipe.cli bench pipeline $(BENCH_PIPELINE_ARGS) $(BENCH_FLAGS)
	@echo "== [2/3] moonpipe bench triton (in-process vs tritonserver over gRPC streaming) =="
	$(PY) -m moonpipe.cli bench triton $(BENCH_TRITON_ARGS) $(BENCH_FLAGS)
	@echo "== [3/3] moonpipe bench short (many short requests, repeated vs unique images) =="
	$(PY) -m moonpipe.cli bench short $(BENCH_SHORT_ARGS) $(BENCH_FLAGS)

# `make reliability`: the reliability suite (tests/reliability, marker `reliability`: bad
# input, cancellation storm, 60 s soak, faults, shutdown) against real tritonservers;
# `make soak`: the soak alone for SOAK_SECONDS (5 minutes). Both print their summaries.
SOAK_SECONDS ?= 300

.PHONY: reliability soak

reliability: setup
	$(VENV)/bin/pytest -m reliability -s tests/reliability $(PYTEST_ARGS)

soak: setup
	MOONPIPE_SOAK_SECONDS=$(SOAK_SECONDS) $(VENV)/bin/pytest -m reliability -s tests/reliability/test_soak.py $(PYTEST_ARGS)

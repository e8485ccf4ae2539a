# FleetPulse: `make demo` runs the whole story on the local stack; `make test` runs the suite.
# Both set everything up on a fresh machine (Python venv, Kafka jars, Mosquitto, FerretDB build).

SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
FP := $(BIN)/fleetpulse
PYTEST_TIMEOUT ?= 900

.PHONY: setup lock stack-up stack-down lint test check demo bench clean system-deps

# Debian packages the stack and tests need; installed only when missing (needs root or sudo).
system-deps:
	@missing=""; \
	command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	command -v java >/dev/null || missing="$$missing openjdk-17-jre-headless"; \
	command -v mvn >/dev/null || missing="$$missing maven"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: requirements.lock pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q "uv==$(UV_VERSION)"
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -r requirements.lock
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	touch $@

# Bytecode is compiled once here: with PYTHONDONTWRITEBYTECODE set (as on these machines) Python never
# writes a .pyc itself, and every process would compile what it imports again (TensorFlow's import:
# 16 s without, 6 s with; each model server, transformer and CLI the tests and the demo start pays it).
setup: system-deps $(VENV)/.installed
	@$(BIN)/python -m compileall -q -j 0 fleetpulse simulator bridges components inference devtools >/dev/null

lock: | $(BIN)/python
	$(BIN)/python -m pip install -q "uv==$(UV_VERSION)"
	$(BIN)/uv pip compile requirements.in -o requirements.lock --python-version 3.11 \
	  --python-platform x86_64-unknown-linux-gnu --no-header --no-annotate --generate-hashes
	sed -i '/^-e /d; /^# Exact pins/d' requirements.lock
	sed -i '1i # Exact pins with their sha256 hashes for every package (Python 3.11, linux x86_64). Regenerate with `make lock`.' requirements.lock

stack-up: setup
	$(FP) stack up

stack-down:
	$(FP) stack down

# The architecture as import rules (.importlinter): kernel, deployables and dev tooling stay apart.
lint: setup
	$(BIN)/lint-imports

# The fast part: everything but the end-to-end and load tests.
check: lint stack-up
	$(BIN)/pytest -m "not slow" --timeout=$(PYTEST_TIMEOUT) -q

# The whole suite, from a clean clone on a fresh machine.
test: lint stack-up
	$(BIN)/pytest --timeout=$(PYTEST_TIMEOUT) -q

demo: setup
	$(FP) demo

bench: stack-up
	$(FP) bench

clean:
	rm -rf $(VENV) reports bench/results/*.json

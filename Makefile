# The two commands: `make run` serves a development endpoint, `make test` runs the whole suite.
# Both set up everything they need first (system packages, .venv, the package).
# `make run TLS=1` serves HTTPS with a development CA and certificate made under var/tls/.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
DEV_CONFIG := config/dev.toml

.PHONY: run run-cluster test soak fuzz bench system-deps venv clean

TLS_ENV := $(if $(TLS),HSMKMS_SERVER_TLS_CERTIFICATE=var/tls/server.pem HSMKMS_SERVER_TLS_KEY=var/tls/server-key.pem)

run: system-deps venv
	$(BIN)/hsmkms dev-setup --config $(DEV_CONFIG) --credentials var/dev-credentials.json $(if $(TLS),--tls)
	$(TLS_ENV) exec $(BIN)/hsmkms serve --config $(DEV_CONFIG)

# Three nodes (127.0.0.1:8081-8083) on one PostgreSQL database and one SoftHSM token, behind HAProxy on
# 127.0.0.1:8080; writes var/dev-credentials.json as `make run` does.  Ctrl-C stops the cluster.
run-cluster: system-deps venv
	@scripts/install-system-deps.sh haproxy
	exec $(BIN)/python scripts/run_cluster.py $(CLUSTER_ARGS)

# The three-node test needs HAProxy, and PostgreSQL and Redis servers of its own (it restarts them); other tests
# use HSMKMS_TEST_POSTGRES_URL / HSMKMS_TEST_REDIS_URL or the local services (tests/services.py).
test: system-deps venv
	@scripts/install-system-deps.sh postgresql redis-server haproxy
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Load with verification: 64 clients for 60 s, restart, decrypt every blob; SOAK_ARGS="--crashes 3" kills
# the server at random moments too.  Bounded in time and count, loopback only.
soak: system-deps venv
	$(BIN)/python scripts/soak.py $(SOAK_ARGS)

# Hypothesis over every action and over raw HTTP, 5000 examples a test (make test runs 25 of each).
fuzz: system-deps venv
	HSMKMS_FUZZ=long $(BIN)/python -m pytest tests/fuzz $(PYTEST_ARGS)

# The benchmark (wrk against the production server, pre-signed requests); figures in var/bench/.
bench: venv
	@scripts/install-system-deps.sh wrk haproxy postgresql redis-server
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python scripts/bench/run.py $(BENCH_ARGS)

system-deps:
	@scripts/install-system-deps.sh

venv: $(INSTALLED)

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

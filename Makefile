# The commands README.md documents. `make setup` then `make test` is exactly what CI runs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python

.PHONY: setup test check lint typecheck unit integration faults demo sim bench bench-buffer bench-publish bench-opcua bench-modbus bench-e2e bench-timings bench-peer build clean

setup: ## create .venv, install the package with dev extras, install Mosquitto, poppler-utils and fuse3 when missing, fetch the component's x86_64 wheels
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	@bash scripts/install-system-packages.sh
	@# The component's wheels for this machine's architecture, so the install test runs with every python3.X here
	@# (it skips one whose wheels are missing, saying so).
	-$(PY) scripts/build_component.py --target cp311-x86_64 --target cp312-x86_64 --target cp313-x86_64 >/dev/null

test: check ## lint, type check, all tests
	$(BIN)/pytest -q --durations=25

check: lint typecheck

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck:
	$(BIN)/mypy

unit:
	$(BIN)/pytest -q tests/unit

integration:
	$(BIN)/pytest -q tests/integration

faults:
	$(BIN)/pytest -q tests/faults

demo: ## both PLC simulators, a local mTLS broker, the gateway and a live view (Ctrl-C stops all)
	$(PY) -m simulators.demo

sim: ## just the two PLC simulators, in the foreground
	@bash -c 'trap "kill 0" EXIT; $(PY) -m simulators.opcua_plc --port 4840 & $(PY) -m simulators.modbus_plc --port 5020 & wait'

bench: bench-buffer bench-publish bench-opcua bench-modbus bench-e2e bench-timings bench-peer

bench-buffer: ## durable appends/s, drain/s, write amplification, RSS with a 10M backlog, recovery time, SD-card wear on an ext4 loop device (device bytes per payload byte)
	$(PY) -m bench.buffer

bench-publish: ## wire bytes/point, points/s with and without IoT Core flow control, 18 M backlog drain, latency p50/p99
	$(PY) -m bench.publish

bench-opcua: ## OPC UA notifications/s on one core, time to subscribe 10,000 nodes, RSS and CPU at 10,000 nodes
	$(PY) -m bench.opcua

bench-modbus: ## Modbus points/s over TCP, poll lateness p99 at 100 ms, RTU frame efficiency at 115200 baud
	$(PY) -m bench.modbus

bench-e2e:
	$(PY) -m bench.e2e

bench-timings: ## what tests no longer assert: fresh-reading delay during a drain, flow-control rate, frozen-broker detection, refused-client retry cost
	$(PY) -m bench.timings

bench-peer: ## ThingsBoard IoT Gateway 3.8.5 side by side on the same Modbus workload (installs it in bench/.peer-venv); CPU per point, ceiling, bytes/point, latency, RSS
	test -x bench/.peer-venv/bin/python || $(PYTHON) -m venv bench/.peer-venv
	bench/.peer-venv/bin/pip install --quiet --disable-pip-version-check -r bench/peer/requirements.txt \
		|| echo "bench-peer: installing ThingsBoard IoT Gateway failed (above); ours is measured alone"
	$(PY) -m bench.peer

build: ## the Greengrass component, exactly what `gdk component build` runs (wheels for CPython 3.11-3.13 on x86_64 and aarch64, downloaded once into build/wheel-cache)
	$(PY) scripts/build_component.py

clean:
	rm -rf var bench/results .pytest_cache .mypy_cache .ruff_cache greengrass-build zip-build wheels

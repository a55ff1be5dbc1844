# Two commands on a fresh machine: `make run` (the stack with demo instances) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test check check-package check-upgrade lint format chaos bench bench-ledger bench-tracing bench-failsafe soak lab lab-failsafe lock clean chromium

$(STAMP): requirements.lock pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/perseus dev --demo

# The browser tests drive Debian's chromium through Playwright (never Playwright's own download).
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium

chromium: $(CHROMIUM)

test: install $(CHROMIUM)
	$(BIN)/ruff check .
	$(BIN)/mypy .
	$(BIN)/pytest -n 3 --dist loadfile --no-loadscope-reorder --durations=15

# The fast tier (under a minute, no servers): lint, types, the pure and unit tests, and every golden
# history replayed against the workflow (tests/unit/test_replay.py).
check: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .
	$(BIN)/pytest -q -m unit -n 2 -p no:cacheprovider

# Build the wheel, install it into a fresh venv, `perseus --version` there and `perseus db init` a
# scratch database (also part of `make test`).
check-package: install
	$(BIN)/pytest -q -p no:cacheprovider tests/integration/test_package.py

# The upgrade runbook of docs/deploy.md, executed: the last release (RELEASES) installed in its own
# venv, a fleet on it upgraded host by host to the working tree and rolled back (a few minutes; also
# part of `make test`).
check-upgrade: install
	$(BIN)/pytest -q -p no:cacheprovider -m upgrade tests/integration/test_upgrade.py -s

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Fleet benchmark (issue 8): own scratch servers; defaults N=1000@15s for 5 min and N=200@1s for
# 2 min, ~30 min in all. Pass flags with BENCH_ARGS, e.g. BENCH_ARGS="--n 100 --interval 5 --duration 60".
bench: install
	$(BIN)/python -m bench.fleet $(BENCH_ARGS)

# Uptime and timeline over a 20,000-entry history written by Perseus, by a Livermore v6 service
# (before and after the ledger fold, same run) and through the ledger (~5 min).
bench-ledger: install
	$(BIN)/python -m bench.ledger $(BENCH_ARGS)

# Tracing's cost on a host worker at 1,000 claims x 15 s: two workers side by side, one traced
# (~16 min; workers run from `git archive HEAD`: commit first).
bench-tracing: install
	$(BIN)/python -m bench.tracing_overhead $(BENCH_ARGS)

# Availability through Redis outages of 30 s and 300 s for every host and one for the holder only,
# with and without the failsafe, three hosts at 2 s (~10 min; BENCH_ARGS="--quick": ~3 min).
bench-failsafe: install
	$(BIN)/python -m bench.failsafe_availability $(BENCH_ARGS)

# The chaos suite's full plan: every fault kind as often as tests/chaos/test_chaos.py lists it (84
# faults, ~8 min on a 2-core machine); `make test` runs each kind a third as often (33 faults).
chaos: install
	PERSEUS_CHAOS_FULL=1 $(BIN)/pytest -p no:cacheprovider tests/chaos -s

# The chaos suite's full plan with control-plane outages of 30–120 s instead of CI's few seconds (~45 min).
soak: install
	PERSEUS_CHAOS_SOAK=1 $(BIN)/pytest -p no:cacheprovider tests/chaos -s

# The lab (issue 27; root): every fault kind PERSEUS_LAB_ROUNDS times (default 5, ~40 min) against
# connector hosts in network namespaces, judged at the sink, on each Redis profile (a single server,
# Sentinel, a Cluster with replicas), then the failsafe's kinds (issue 29) against an exchange with
# the failsafe on, on the profiles PERSEUS_LAB_FAILSAFE_PROFILES names; writes docs/lab.md (each
# run's section replaced, the others kept). `make test` runs one round of the plain kinds on the
# single server, none of the failsafe's. Replay a run with the command docs/lab.md (or a failure)
# prints.
lab: install
	PERSEUS_LAB_ROUNDS=$${PERSEUS_LAB_ROUNDS:-5} PERSEUS_LAB_REPORT=docs/lab.md \
		PERSEUS_LAB_PROFILES=$${PERSEUS_LAB_PROFILES-single,sentinel,cluster} \
		PERSEUS_LAB_FAILSAFE_PROFILES=$${PERSEUS_LAB_FAILSAFE_PROFILES-single,sentinel,cluster} \
		$(BIN)/pytest -p no:cacheprovider -s tests/lab/test_lab.py -k schedule

# The failsafe's kinds alone (Redis cut from every host, the holder, a standby; back empty), as in
# `make lab` (~6 min a profile at 5 rounds).
lab-failsafe: install
	PERSEUS_LAB_PROFILES= $(MAKE) lab

# Re-pin every dependency (needs pip-tools); commit the result. Pinned versions only: the index and
# find-links this machine's pip uses are its own business, not the lock file's.
lock:
	$(BIN)/pip install --quiet pip-tools
	$(BIN)/pip-compile --quiet --extra dev --strip-extras --no-emit-index-url --no-emit-find-links \
		--output-file requirements.lock pyproject.toml

clean:
	rm -rf $(VENV) build *.egg-info

# `make run` starts the whole platform; `make test` runs the whole suite. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test bench setup setup-dev clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

setup: $(VENV)/.installed

setup-dev: $(VENV)/.installed-dev

run: setup
	$(PY) manage.py start

test: setup-dev
	$(PY) -m pytest $(PYTEST_ARGS)

$(VENV)/.installed-bench: $(VENV)/.installed-dev bench/requirements.txt
	$(PY) -m pip install --quiet -r bench/requirements.txt
	touch $@

# wrk and hey drive the HTTP benchmarks: Debian's packages, installed when missing (as root).
bench: $(VENV)/.installed-bench
	@(command -v wrk && command -v hey) >/dev/null || apt-get install -y wrk hey >/dev/null || (apt-get update >/dev/null && apt-get install -y wrk hey >/dev/null)
	$(PY) bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var

# `make run` starts the whole platform; `make test` runs the whole suite. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test test-django6 bench setup setup-dev clean

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

# Django's task API on Django 6.0 (Python 3.12+): the backend's tests run again in a venv of their own.
DJANGO6_PYTHON ?= python3.12
DJANGO6_VERSION := 6.0.10
VENV6 := $(VENV)/django6
$(VENV6)/.installed: requirements.txt requirements-dev.txt
	$(DJANGO6_PYTHON) -m venv $(VENV6)
	$(VENV6)/bin/python -m pip install --quiet --upgrade pip
	mkdir -p var
	sed 's/^Django==.*/Django==$(DJANGO6_VERSION)/' requirements.txt > var/requirements-django6.txt
	grep -v '^-r' requirements-dev.txt >> var/requirements-django6.txt
	$(VENV6)/bin/python -m pip install --quiet -r var/requirements-django6.txt
	touch $@

test-django6: $(VENV6)/.installed
	$(VENV6)/bin/python -m pytest tests/test_task_backend.py tests/integration/test_django_task_api.py $(PYTEST_ARGS)

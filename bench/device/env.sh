# Sourced on the lent GPU machine (from the repo root) once the payloads are unpacked
# (../shared/gpu/README.md; bench/device_deps.sh for the services' own deps): the four services,
# the demo and the benches run from the source tree with unsloth, vLLM and their deps.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
       UNSLOTH_DISABLE_STATISTICS=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 TOKENIZERS_PARALLELISM=false
src=$(pwd)/shared/src:$(pwd)/services/dataset/src:$(pwd)/services/trainer/src:$(pwd)/services/inference/src:$(pwd)/services/gateway/src
export PYTHONPATH=$src:/tmp/gpu-site/site:/tmp/vsite:/tmp/vdeps:/tmp/tldeps
export PATH=/tmp/vsite/bin:$PATH

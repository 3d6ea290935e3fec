"""The fallback CPU engine process: the real ``transformers serve`` server pinned to one model
folder (the default CPU engine is vLLM's CPU build; this one runs with INFERENCE_ENGINE=transformers
or where no vLLM interpreter is installed).

Run by the controller as::

    python -m tuneloop_inference.engines.transformers_serve --model-dir DIR \
        --served-model-name mv-... --port N [--continuous-batching] [--device cpu]

It is transformers 5.17's own server (``transformers.cli.serve.Serve`` with ``force_model``),
with four small, documented adjustments so that it behaves like ``vllm serve
--served-model-name`` (which the controller expects of every engine):

1. ``/v1/models`` lists the pinned model under its served name. Upstream scans the Hugging
   Face hub cache instead (and answers 500 when there is none, e.g. offline).
2. Requests may name the served name; upstream only accepts the folder path of the pinned
   model, and responses carry the served name instead of ``<path>@main``.
3. ``temperature > 0`` turns sampling on (upstream keeps ``do_sample`` from the model's
   generation config, so a greedy model silently ignored the temperature).
4. ``stop`` is honoured on ``/v1/completions`` too (upstream maps it on chat only).

The patches reach into transformers' private serving modules, so they are guarded: the engine
refuses to start (a clear message in its log, the deployment ``failed``) on a transformers
other than the tested series (``TESTED``), and a start-up self-test checks that every patched
function still exists with the signature the patch wraps, before the server starts. The
controller's smoke check then proves the served name answers.
"""

from __future__ import annotations

import argparse
import time
from typing import Any


TESTED = "5.17."  # the transformers series these patches are written and tested against


class PatchError(RuntimeError):
    """transformers is not the version the patches were written for, or its internals moved."""


def self_test() -> None:
    """Refuse to patch what is not there: the version series, then each patched target."""
    import inspect

    import transformers

    if not transformers.__version__.startswith(TESTED):
        raise PatchError(f"transformers {transformers.__version__}: the transformers serve engine's "
                         f"patches are tested on {TESTED}x only; install that or use the vllm "
                         "engine (INFERENCE_ENGINE=vllm)")
    from transformers.cli.serving import completion, model_manager, utils

    targets = {"ModelManager.get_gen_models": (model_manager.ModelManager, "get_gen_models", ()),
               "BaseHandler._resolve_model": (utils.BaseHandler, "_resolve_model", ("body",)),
               "BaseHandler._build_generation_config": (
                   utils.BaseHandler, "_build_generation_config", ("body", "use_cb")),
               "CompletionHandler._build_generation_config": (
                   completion.CompletionHandler, "_build_generation_config", ("body", "use_cb"))}
    for label, (owner, attr, params) in targets.items():
        fn = getattr(owner, attr, None)
        if fn is None:
            raise PatchError(f"transformers {transformers.__version__}: {label} is gone")
        missing = [p for p in params if p not in inspect.signature(fn).parameters]
        if missing:
            raise PatchError(f"transformers {transformers.__version__}: {label} has no {missing}")


def _patch(served_name: str, model_dir: str) -> None:
    from transformers.cli.serving import completion, model_manager, utils

    created = int(time.time())

    def get_gen_models(cache_dir: str | None = None) -> list[dict]:
        return [{"id": served_name, "object": "model", "created": created,
                 "owned_by": "tuneloop", "root": model_dir}]

    model_manager.ModelManager.get_gen_models = staticmethod(get_gen_models)

    original_resolve = utils.BaseHandler._resolve_model

    def _resolve_model(self: Any, body: dict) -> tuple[Any, Any, Any]:
        if body.get("model") in (None, served_name):
            body["model"] = self.model_manager.force_model
        _, model, processor = original_resolve(self, body)
        return served_name, model, processor

    utils.BaseHandler._resolve_model = _resolve_model

    original_build = utils.BaseHandler._build_generation_config

    def _build_generation_config(self: Any, body: dict, model_generation_config: Any,
                                 use_cb: bool = False) -> Any:
        config = original_build(self, body, model_generation_config, use_cb=use_cb)
        temperature = body.get("temperature")
        if temperature is not None and float(temperature) > 0:
            config.do_sample = True
        return config

    utils.BaseHandler._build_generation_config = _build_generation_config

    completion_build = completion.CompletionHandler._build_generation_config

    def _completion_build(self: Any, body: dict, model_generation_config: Any,
                          use_cb: bool = False) -> Any:
        config = completion_build(self, body, model_generation_config, use_cb=use_cb)
        if body.get("stop") is not None:
            config.stop_strings = body["stop"]
        return config

    completion.CompletionHandler._build_generation_config = _completion_build


CB_BLOCK_SIZE = 256


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tuneloop-transformers-engine")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--served-model-name", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--continuous-batching", action="store_true")
    parser.add_argument("--cb-kv-cache-tokens", type=int, default=16384,
                        help="continuous batching KV cache, in tokens (default sizing takes a "
                             "fraction of all RAM on a CPU)")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)

    try:
        self_test()
    except PatchError as exc:
        raise SystemExit(f"tuneloop transformers engine: {exc}") from None
    _patch(args.served_model_name, args.model_dir)
    from transformers.cli.serve import Serve

    cb: dict = {}
    if args.continuous_batching:
        cb = {"cb_num_blocks": max(1, -(-args.cb_kv_cache_tokens // CB_BLOCK_SIZE)),
              "cb_block_size": CB_BLOCK_SIZE,
              "cb_max_batch_tokens": min(args.cb_kv_cache_tokens, 4096)}
    Serve(force_model=args.model_dir, continuous_batching=args.continuous_batching,
          device=args.device, host=args.host, port=args.port, log_level=args.log_level, **cb)


if __name__ == "__main__":
    main()

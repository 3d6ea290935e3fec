"""Tiny local models for tests: random-weight Llama + a tokenizer trained here, never downloaded.

``build_tiny_model(out_dir)`` writes a normal Hugging Face model folder (safetensors, tokenizer
with a ChatML chat template, generation config) that every component loads like a real base.
With ``pretrain_steps > 0`` it is first trained briefly on unpaired support-ticket text so that
a LoRA on top can learn the ticket -> label mapping (a purely random base cannot).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]

GENERAL_TEXT = [
    "The capital of France is Paris.", "Water boils at 100 degrees Celsius.",
    "Two plus two is four.", "The sun rises in the east.", "A week has seven days.",
    "The largest planet is Jupiter.", "Python is a programming language.",
]


def build_tokenizer(texts: list[str], vocab_size: int = 1024) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=None, eos_token="<|im_end|>",
                                   pad_token="<pad>", unk_token=None)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(out_dir: str | Path, *, hidden: int = 64, layers: int = 2,
                     vocab_size: int = 1024, pretrain_steps: int = 0, seed: int = 0,
                     head_dim: int = 32) -> Path:
    """Write a tiny Llama model folder to ``out_dir`` and return its path.

    ``head_dim`` is set explicitly (4 heads of 32, whatever ``hidden`` is): vLLM's CPU attention
    kernels take head sizes 32, 64, 80, 96, ... only, and the tests serve these models on it."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from ..examples.support_tickets import corpus_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = corpus_text(1500, seed=seed + 7) + GENERAL_TEXT * 20
    tok = build_tokenizer(texts, vocab_size)
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim,
        max_position_embeddings=2048, tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None,
    )
    model = LlamaForCausalLM(cfg)
    if pretrain_steps:
        _pretrain(model, tok, texts, pretrain_steps)
    model.generation_config = GenerationConfig(
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, do_sample=False,
        max_new_tokens=64,
    )
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "tuneloop-tiny.json").write_text(json.dumps(
        {"hidden": hidden, "layers": layers, "head_dim": head_dim, "pretrain_steps": pretrain_steps, "seed": seed}))
    return out


def _pretrain(model: Any, tok: Any, texts: list[str], steps: int, batch: int = 16) -> None:
    """Plain causal-LM training on unpaired text (teaches the tiny model the ticket vocabulary)."""
    import random

    import torch

    rng = random.Random(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        chunk = [t + tok.eos_token for t in rng.sample(texts, batch)]
        enc = tok(chunk, return_tensors="pt", padding=True, truncation=True, max_length=128)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        loss = model(**enc, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()

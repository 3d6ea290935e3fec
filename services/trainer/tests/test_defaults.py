"""Defaults chosen for the device, the model and the data (:mod:`tuneloop_trainer.defaults`).

Devices are described by their numbers (``DeviceInfo``), so the GPU choices are checked here
without a GPU; the memory model is checked against the peaks measured on the H200.
"""

from __future__ import annotations

from transformers import LlamaConfig

from tuneloop_trainer.defaults import GIB, DeviceInfo, estimate_bytes, model_info, resolve
from tuneloop_trainer.hparams import Hyperparameters

H200 = DeviceInfo("cuda", "NVIDIA H200", 140 * GIB, 139 * GIB, True, 16, 0.0)
SMALL_GPU = DeviceInfo("cuda", "a 12 GiB card", 12 * GIB, 11 * GIB, True, 8, 0.0)
LLAMA_1B = model_info(LlamaConfig(vocab_size=32768, hidden_size=2048, intermediate_size=8192,
                                  num_hidden_layers=16, num_attention_heads=32,
                                  num_key_value_heads=8, tie_word_embeddings=True))
LLAMA_8B = model_info(LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                                  num_hidden_layers=32, num_attention_heads=32,
                                  num_key_value_heads=8))
SMOL = model_info(LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                              num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                              tie_word_embeddings=True))
LENGTHS = [79, 200, 359, 359, 500, 900, 2005] * 200  # the varlen benchmark's shape, median 359


def test_parameter_counts_from_config():
    assert 1.0e9 < LLAMA_1B.params < 1.1e9
    assert 7.9e9 < LLAMA_8B.params < 8.1e9
    assert 130e6 < SMOL.params < 140e6


def test_memory_model_matches_h200_measurements():
    hp = Hyperparameters()
    def gib(four: bool, ckpt: bool) -> float:
        return estimate_bytes(LLAMA_1B, hp, H200, four, ckpt, 4096)["peak_allocated"] / GIB

    assert 2.6 * 0.75 < gib(False, True) < 2.6 * 1.35      # measured 2.60 GiB
    assert 7.04 * 0.75 < gib(False, False) < 7.04 * 1.25   # measured 7.04 GiB
    assert gib(True, True) < gib(False, True)


def test_big_gpu_gets_16bit_packed_no_checkpointing():
    plan = resolve(Hyperparameters(), H200, LLAMA_1B, "unsloth", LENGTHS)
    hp = plan.hp
    assert hp.load_in_4bit is False and hp.gradient_checkpointing is False and hp.packing is True
    assert hp.per_device_train_batch_size * hp.max_seq_length == 16384  # 1,400 rows: >= 60 steps
    assert hp.gradient_accumulation_steps == 1 and hp.learning_rate == 2e-4
    chosen = {c["setting"]: c for c in plan.reasons}
    assert {"load_in_4bit", "gradient_checkpointing", "packing"} <= set(chosen)
    assert "16-bit LoRA" in chosen["load_in_4bit"]["why"] and plan.memory["fits"]


def test_small_datasets_keep_60_steps_and_a_fixed_step_count_gets_the_full_forward():
    demo = [150] * 1800  # the GPU demo's shape: 1,200 tickets + 600 replay rows, short
    hp = resolve(Hyperparameters(), H200, SMOL, "unsloth", demo).hp
    steps = 3 * sum(demo) / (hp.per_device_train_batch_size * hp.max_seq_length)
    assert hp.per_device_train_batch_size < 16384 // hp.max_seq_length and steps >= 60
    tiny = resolve(Hyperparameters(), H200, SMOL, "unsloth", [100] * 50).hp
    assert tiny.per_device_train_batch_size == 1
    fixed = resolve(Hyperparameters(max_steps=35), H200, LLAMA_1B, "unsloth", demo).hp
    assert fixed.per_device_train_batch_size * fixed.max_seq_length == 16384


def test_small_gpu_big_model_falls_back_to_4bit_and_checkpointing():
    hp = resolve(Hyperparameters(), SMALL_GPU, LLAMA_8B, "unsloth", LENGTHS).hp
    assert hp.load_in_4bit is True and hp.gradient_checkpointing is True


def test_explicit_settings_always_win():
    given = Hyperparameters(load_in_4bit=True, packing=False, learning_rate=1e-4,
                            per_device_train_batch_size=2)
    plan = resolve(given, H200, LLAMA_1B, "unsloth", LENGTHS)
    assert plan.hp.load_in_4bit is True and plan.hp.packing is False
    assert plan.hp.learning_rate == 1e-4 and plan.hp.per_device_train_batch_size == 2
    assert not {"load_in_4bit", "packing", "learning_rate"} & {c["setting"] for c in plan.reasons}


def test_cpu_recipe_for_a_small_model_and_threads_from_load():
    busy = DeviceInfo("cpu", "cpu", 24 * GIB, 20 * GIB, False, 2, 1.8)
    plan = resolve(Hyperparameters(), busy, SMOL, "peft", [150] * 128)
    assert plan.hp.learning_rate == 2e-3 and plan.hp.num_train_epochs == 2
    assert plan.hp.packing is False and plan.hp.group_by_length is True
    assert plan.hp.load_in_4bit is False and plan.hp.gradient_checkpointing is False
    assert plan.threads == 1
    quiet = DeviceInfo("cpu", "cpu", 24 * GIB, 20 * GIB, False, 2, 0.1)
    assert resolve(Hyperparameters(), quiet, SMOL, "peft", [150]).threads == 2
    assert resolve(Hyperparameters(), busy, SMOL, "peft", [150], configured_threads=2).threads == 2
    # two DDP ranks on a quiet 2-core machine: one thread each, not two
    assert resolve(Hyperparameters(), quiet, SMOL, "peft", [150], processes=2).threads == 1


def test_gpu_schedule_is_the_measured_one_and_reasons_are_unique():
    plan = resolve(Hyperparameters(), H200, SMOL, "unsloth", [120] * 1525)  # the GPU demo's data
    assert plan.hp.num_train_epochs == 3 and plan.hp.learning_rate == 2e-3
    settings = [c["setting"] for c in plan.reasons]
    assert len(settings) == len(set(settings)) and "num_train_epochs" in settings
    mine = resolve(Hyperparameters(num_train_epochs=1, learning_rate=5e-4), H200, SMOL,
                   "unsloth", [120] * 1525)
    assert mine.hp.num_train_epochs == 1 and mine.hp.learning_rate == 5e-4
    assert not {"num_train_epochs", "learning_rate"} & {c["setting"] for c in mine.reasons}

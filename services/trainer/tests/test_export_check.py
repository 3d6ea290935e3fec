"""The export check compares the exported model with the model that was trained.

A LoRA on the briefly pretrained tiny base stands for a trained model (its adapter weights are
random but small, so it answers differently from the base). Three exports of it:
- a correct merge (bf16 folder, loaded as served) passes;
- the same merge with one layer perturbed fails;
- a "QLoRA" run — the adapter trained on a 4-bit base — whose export merges the adapter into the
  16-bit base instead: the check compares against the 4-bit configuration and catches the change.
  (4-bit kernels need a GPU, so the quantized base is simulated here, and coarsely: a tiny model's
  greedy answers survive a real 4-bit code, so each weight row is rounded to a ternary code — a
  quantization error large enough to change behaviour, which is the case under test.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tuneloop_trainer.export import verify
from tuneloop_trainer.hparams import ExportOptions

from trainer_testlib import article_to_chat

EX = ExportOptions()


def _lora(base_dir: Path, quantize: bool = False):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    if quantize:
        with torch.no_grad():
            for name, p in base.named_parameters():
                if p.dim() == 2 and "embed" not in name:
                    scale = p.abs().mean(dim=1, keepdim=True)  # ternary code per row
                    p.copy_((p / scale).round().clamp(-1, 1) * scale)
    torch.manual_seed(3)
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                     init_lora_weights=False)
    model = get_peft_model(base, cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(0.3)
    return model.eval()


def _merge_to(model, tok, out: Path) -> Path:
    merged = model.merge_and_unload().to(torch.bfloat16)
    merged.config.dtype = torch.bfloat16
    merged.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def setup(tiny_base_dir: Path, ticket_rows):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_base_dir))
    # 60 prompts, not the job's 6: the tiny model (head_dim 32 since the vLLM CPU engine) ends
    # its answers after ~3 tokens, and the check must compare enough positions to mean something
    rows = [article_to_chat(r) for r in ticket_rows[200:260]]
    prompt_ids = verify.render_prompts(tok, [r["messages"][:1] for r in rows])
    golds = [r["messages"][-1]["content"] for r in rows]
    return tok, prompt_ids, golds


def _check(setup, model, merged_dir: Path) -> dict:
    tok, prompt_ids, golds = setup
    ref = verify.greedy_with_gaps(model, prompt_ids, EX.verify_max_new_tokens,
                                  tok.eos_token_id, tok.pad_token_id)
    return verify.verify_merged(merged_dir, prompt_ids, ref, golds,
                                lambda t: tok.decode(t, skip_special_tokens=True),
                                EX.verify_max_new_tokens, tok.eos_token_id, tok.pad_token_id,
                                EX.verify_tie_tolerance, EX.verify_min_agreement,
                                EX.verify_task_tolerance)


def test_correct_merge_passes(setup, tiny_base_dir: Path, tmp_path: Path):
    model = _lora(tiny_base_dir)
    res = _check(setup, model, _merge_to(_lora(tiny_base_dir), setup[0], tmp_path / "m"))
    assert res["passed"], res["detail"]
    assert res["kind"] == "merged_vs_trained" and res["decisive_tokens"] > 50, \
        {k: v for k, v in res.items() if k != "detail"}
    assert res["agreement"] >= EX.verify_min_agreement


def test_one_perturbed_layer_fails(setup, tiny_base_dir: Path, tmp_path: Path):
    from safetensors.torch import load_file, save_file

    out = _merge_to(_lora(tiny_base_dir), setup[0], tmp_path / "m")
    weights = load_file(out / "model.safetensors")
    key = next(k for k in weights if "layers.0.mlp.down_proj" in k)
    torch.manual_seed(0)
    w = weights[key].float()
    weights[key] = (w + torch.randn_like(w) * w.std() * 3).to(torch.bfloat16)
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    res = _check(setup, _lora(tiny_base_dir), out)
    assert not res["passed"], res["detail"]
    assert res["agreement"] < EX.verify_min_agreement and res["first_divergence"] is not None


def test_qlora_export_that_changes_behaviour_is_caught(setup, tiny_base_dir: Path, tmp_path: Path):
    trained = _lora(tiny_base_dir, quantize=True)           # what the job trained: 4-bit base + LoRA
    exported = _merge_to(_lora(tiny_base_dir), setup[0], tmp_path / "m")  # LoRA into the 16-bit base
    res = _check(setup, trained, exported)
    assert not res["passed"], res["detail"]
    # the same export checked against the 16-bit configuration would have passed: the old check's
    # blind spot
    assert _check(setup, _lora(tiny_base_dir), exported)["passed"]


def test_near_ties_are_skipped_not_failed():
    ref = [{"tokens": [5, 6, 7, 8], "gaps": [3.0, 0.01, 2.0, 2.0]}]
    res = verify.check(ref, [[5, 9, 7, 8]], ["a"], ["a"], ["a"], 0.5, 0.95, 0.1)
    assert res["passed"] and res["near_ties"] == 1 and res["decisive_tokens"] == 3
    res = verify.check(ref, [[5, 6, 1, 8]], ["a"], ["a"], ["a"], 0.5, 0.95, 0.1)
    assert not res["passed"] and res["first_divergence"]["position"] == 2


def test_task_behaviour_prose_instead_of_json_fails():
    ref = [{"tokens": [1], "gaps": [5.0]}]
    golds = ['{"urgency": "high"}', '{"urgency": "low"}']
    res = verify.check(ref * 2, [[1], [1]], golds, ['{"urgency": "high"}', "It is low."], golds,
                       0.5, 0.95, 0.1)
    assert not res["passed"] and res["task_merged"]["json_valid"] == 0.5
    assert "json_valid trained 1.000 vs merged 0.500" in res["detail"]

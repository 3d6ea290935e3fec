"""Packed rows are isolated: each row's logits and loss in a packed batch equal the row alone.

The batch is built the way training builds it (TRL's BFD packing + the trainer's own collator,
which drops the attention mask and restarts position ids per row), on a real model.
"""

from __future__ import annotations

from pathlib import Path

from tuneloop_trainer import backends
from tuneloop_trainer.hparams import Hyperparameters
from tuneloop_trainer.packing import isolation_probe, split_packed
from tuneloop_trainer.data import to_prompt_completion
from tuneloop_trainer.training import make_trainer_class, sft_config

from trainer_testlib import FAST_HP, article_to_chat


def _packed_trainer(model_dir: Path, ticket_rows, tmp_path: Path):
    from datasets import Dataset

    hp = Hyperparameters(**{**FAST_HP, "packing": True, "max_seq_length": 512})
    model, tok = backends.get_backend("peft").load(str(model_dir), hp)
    ds = to_prompt_completion(Dataset.from_list([article_to_chat(r) for r in ticket_rows[:16]]))
    return make_trainer_class()(model=model, args=sft_config(hp, tmp_path / "out", {}, 16),
                                train_dataset=ds, eval_dataset=ds, processing_class=tok)


def test_packed_rows_match_rows_alone(tiny_random_dir: Path, ticket_rows, tmp_path: Path):
    trainer = _packed_trainer(tiny_random_dir, ticket_rows, tmp_path)
    packs = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    assert any(len(p["seq_lengths"]) >= 3 for p in packs), "the tiny rows must share packs"
    res = isolation_probe(trainer.model, trainer.data_collator, trainer.train_dataset)
    assert res["passed"] is True, res
    assert res["rows"] >= 3
    assert res["max_logit_diff"] < 1e-3 and res["max_loss_diff"] < 1e-4


def test_probe_catches_rows_that_see_each_other(tiny_random_dir: Path, ticket_rows, tmp_path: Path):
    """Negative control: without the per-row position restarts the model sees one long sequence,
    so later rows attend to earlier ones — the probe must fail."""
    trainer = _packed_trainer(tiny_random_dir, ticket_rows, tmp_path)

    def leaky(examples):
        batch = trainer.data_collator(examples)
        batch.pop("position_ids", None)
        return batch

    res = isolation_probe(trainer.model, leaky, trainer.train_dataset)
    assert res["passed"] is False, res
    assert "attend to each other" in res["detail"]


def test_split_packed_slices_every_token_column():
    ex = {"input_ids": [1, 2, 3, 4, 5], "completion_mask": [0, 1, 0, 0, 1], "seq_lengths": [2, 3]}
    rows = split_packed(ex)
    assert rows == [{"input_ids": [1, 2], "completion_mask": [0, 1], "seq_lengths": [2]},
                    {"input_ids": [3, 4, 5], "completion_mask": [0, 0, 1], "seq_lengths": [3]}]

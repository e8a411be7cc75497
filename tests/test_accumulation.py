"""Token-exact gradient accumulation: N accumulated batches give the gradient of one batch holding
their union (the loss is divided by the step's total target tokens), not the mean of per-batch means.

Four batches of very different lengths go through a real Trainer with ``accumulate_grad_batches=4``;
the gradient the optimizer step gets (after :meth:`Seq2SeqModule.on_before_optimizer_step`, before
clipping) must equal, within 1e-6 in fp32, that of one step on their union, and so must the logged
``train/loss`` (per token of the step). The old normalization
(each batch's per-token mean, averaged by Lightning) is run too and must miss by far more. The slow
test does the same over two DDP processes (gloo on CPU) accumulating two batches each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from helpers import TINY_MODEL, TINY_OPTIM, tiny_trainer, toy_datamodule
from seq2seq.data.datamodule import collate
from seq2seq.data.tokenizer import Tokenizer
from seq2seq.models.lit_module import Seq2SeqModule

pytestmark = pytest.mark.usefixtures("one_thread")


class GradientProbe(Seq2SeqModule):
    """Keeps the gradients the optimizer step would use (after the token normalization)."""

    grads: dict[str, torch.Tensor] | None = None
    token_exact = True

    def _token_exact(self) -> bool:
        return self.token_exact and super()._token_exact()

    def _loss_scale(self) -> float:
        return 1.0 / 3000  # any constant shared by the batches works; not 1, so the test sees it cancel

    def on_before_optimizer_step(self, optimizer) -> None:
        super().on_before_optimizer_step(optimizer)
        self.grads = {n: p.grad.detach().clone() for n, p in self.named_parameters() if p.grad is not None}


def _step_gradients(tokenizer: Tokenizer, batches: list[dict], accumulate: int, token_exact: bool = True) -> dict:
    torch.manual_seed(0)  # the same initial weights for every run
    module = GradientProbe(model=TINY_MODEL, optim=TINY_OPTIM, tokenizer=tokenizer, speed={"compile": False})
    module.token_exact = token_exact
    trainer = tiny_trainer(max_steps=1, accumulate_grad_batches=accumulate, gradient_clip_val=1.0, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    assert trainer.global_step == 1
    # The logged per-token loss of the step rides along (not a parameter name: no clash).
    return {**module.grads, "train/loss": trainer.callback_metrics["train/loss"].reshape(1)}


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and a
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def four_batches(root: Path):
    """A tokenizer and four batches of the embedded corpus whose target token counts are far apart."""
    dm = toy_datamodule(root)
    dm.prepare_data()
    dm.setup("fit")
    data = dm.datasets["train"]
    by_length = sorted(range(len(data)), key=lambda i: len(data[i][2]))
    # 2 short, 6 long, 1 medium, 4 short-to-medium sentences.
    groups = [by_length[:2], by_length[-6:], by_length[100:101], by_length[40:44]]
    return dm.tokenizer, [collate([data[i] for i in group]) for group in groups]


def test_four_accumulated_batches_equal_one_batch_of_their_union(tmp_path):
    tokenizer, batches = four_batches(tmp_path)
    union = collate([item for batch in batches for item in _items(batch)])
    tokens = [int((b["tgt_out"] != 0).sum()) for b in batches]
    assert len(set(tokens)) == 4 and max(tokens) > 5 * min(tokens)

    one_batch = _step_gradients(tokenizer, [union], accumulate=1)
    accumulated = _step_gradients(tokenizer, batches, accumulate=4)
    assert _max_difference(accumulated, one_batch) <= 1e-6
    # The mean of per-batch means (what Lightning does with a per-batch mean loss) is another gradient.
    mean_of_means = _step_gradients(tokenizer, batches, accumulate=4, token_exact=False)
    assert _max_difference(mean_of_means, one_batch) > 1e-4


def _items(batch: dict) -> list:
    """The (index, source ids, target ids) items a collated batch was made of."""
    items = []
    for row in range(batch["src"].size(0)):
        src, tgt = batch["src"][row], batch["tgt_out"][row]
        src, tgt = src[src != 0].numpy(), tgt[tgt != 0].numpy()[:-1]  # without padding and the final EOS
        items.append((int(batch["index"][row]), src, tgt))
    return items


DDP_SCRIPT = """
import json, sys
import torch
from torch.utils.data import DataLoader
sys.path.insert(0, sys.argv[1])
from test_accumulation import GradientProbe, four_batches
from helpers import TINY_MODEL, TINY_OPTIM, tiny_trainer
from pathlib import Path

torch.set_num_threads(1)
tokenizer, batches = four_batches(Path(sys.argv[2]))

class Sharded(GradientProbe):
    def train_dataloader(self):  # rank r accumulates batches 2r and 2r + 1
        rank = self.trainer.global_rank
        return DataLoader(batches[2 * rank: 2 * rank + 2], batch_size=None)

torch.manual_seed(0)
module = Sharded(model=TINY_MODEL, optim=TINY_OPTIM, tokenizer=tokenizer, speed={"compile": False})
trainer = tiny_trainer(devices=2, strategy="ddp", max_steps=1, accumulate_grad_batches=2, limit_val_batches=0)
trainer.fit(module)
with open(f"{sys.argv[3]}.{trainer.global_rank}", "w") as f:
    loss = trainer.callback_metrics["train/loss"].reshape(1)
    json.dump({k: v.tolist() for k, v in {**module.grads, "train/loss": loss}.items()}, f)
"""


@pytest.mark.slow
def test_accumulation_over_two_ddp_processes_equals_one_batch_of_their_union(tmp_path):
    tokenizer, batches = four_batches(tmp_path)
    union = collate([item for batch in batches for item in _items(batch)])
    one_batch = _step_gradients(tokenizer, [union], accumulate=1)
    script = tmp_path / "ddp_accumulate.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run([sys.executable, str(script), str(Path(__file__).parent), str(tmp_path), str(tmp_path / "grads")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        grads = {k: torch.tensor(v) for k, v in json.loads((tmp_path / f"grads.{rank}").read_text()).items()}
        assert _max_difference(grads, one_batch) <= 1e-6

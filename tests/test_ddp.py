"""DDP on two CPU processes (``trainer=ddp_sim``, gloo): validation scores the whole validation set.

The validation sampler gives each rank every second batch and pads the shorter rank by repeating a
batch; the LightningModule gathers (index, hypothesis) pairs from every rank and keeps one per
index, so corpus BLEU over two processes must equal BLEU over one, exactly.

The script below runs ``Trainer.validate`` with the trainer config named on its command line; for
``ddp_sim`` Lightning starts the second process by running the same command line again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

VALIDATE = '''
import json, sys
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from seq2seq.config import config_dir
from seq2seq.models.lit_module import Seq2SeqModule

ckpt, data_root, cache, trainer_name, out = sys.argv[1:6]
torch.set_num_threads(1)
with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
    cfg = compose("train", overrides=[f"trainer={trainer_name}", "data.generate=null", f"data.root={data_root}",
                                      "data.vocab_size=400", f"paths.cache_dir={cache}",
                                      f"paths.output_dir={out}.run"])
datamodule = instantiate(cfg.data)
module = Seq2SeqModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
trainer = instantiate(cfg.trainer, logger=False, callbacks=[], enable_progress_bar=False,
                      enable_checkpointing=False, enable_model_summary=False)
trainer.validate(module, datamodule=datamodule)
result = module.eval_results["val"]
if trainer.is_global_zero:
    with open(out, "w") as f:
        json.dump({"world_size": trainer.world_size, "bleu": float(trainer.callback_metrics["val/bleu"]),
                   "chrf": float(trainer.callback_metrics["val/chrf"]), "indices": result["indices"],
                   "hypotheses": result["hypotheses"]}, f)
'''


def _validate(script: Path, trainer: str, ckpt: Path, data: Path, cache: Path, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    result = subprocess.run([sys.executable, str(script), str(ckpt), str(data), str(cache), trainer, str(out)],
                            cwd=script.parent, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    if trainer == "ddp_sim":
        assert "distributed_backend=gloo" in result.stdout + result.stderr
    return json.loads(out.read_text())


def test_bleu_over_two_processes_equals_one_process(tiny_run, tiny_checkpoint, tmp_path):
    script = tmp_path / "validate.py"
    script.write_text(VALIDATE)
    data, cache = Path(tiny_run["data_dir"]), Path(tiny_run["run_dir"]).parent / "cache"
    one = _validate(script, "cpu", tiny_checkpoint, data, cache, tmp_path / "one.json")
    two = _validate(script, "ddp_sim", tiny_checkpoint, data, cache, tmp_path / "two.json")
    assert (one["world_size"], two["world_size"]) == (1, 2)
    n_val = len((data / "val.de").read_text(encoding="utf-8").splitlines())
    assert one["indices"] == two["indices"] == list(range(n_val))  # every sentence once
    assert one["hypotheses"] == two["hypotheses"]
    assert one["bleu"] == two["bleu"] and one["chrf"] == two["chrf"]
    assert one["bleu"] > 0


def test_ddp_sim_training_writes_one_run_folder_from_rank_zero(tmp_path):
    """Two processes train and validate without hanging; rank 0 alone writes the run's files."""
    from helpers import QUICK, run_train

    result = run_train([*QUICK, "trainer=ddp_sim", "trainer.max_epochs=2", "trainer.limit_train_batches=3",
                        "callbacks.periodic_checkpoint.every_n_train_steps=2"], tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "distributed_backend=gloo" in result.stdout + result.stderr
    assert (result.stdout + result.stderr).count("Run folder:") == 1  # printed by rank 0 only
    runs = [p for p in (tmp_path / "outputs" / "train" / "runs").glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs  # the second process reuses the first one's run folder
    run = runs[0]
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"val/bleu", "test/bleu"} <= metrics.keys()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    rows = (run / "csv" / "metrics.csv").read_text().splitlines()
    assert len(rows) == len(set(rows))  # one logger, on rank 0
    assert not list(run.rglob("*.tmp"))


def test_ddp_resume_at_an_epoch_end_continues_exactly(tmp_path):
    """Two processes: 1 epoch, then resumed to 2, equals 2 epochs at once (weights, metrics, curve).

    Each rank's random generators are saved in rank 0's checkpoint and each rank's sampler resumes
    its own share of the batches.
    """
    from helpers import TINY_OVERRIDES, command_env
    from helpers import comparable_metrics as _comparable
    from helpers import loss_curve as _curve

    common = [*TINY_OVERRIDES, "data.generate.sizes={train:600,val:32,test:32}", "data.max_tokens=512",
              "trainer=ddp_sim", "trainer.max_time=null", "trainer.log_every_n_steps=1", "test=false"]
    a, b = tmp_path / "a", tmp_path / "b"

    def train(*args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "seq2seq.train", *common, *args], cwd=tmp_path,
                                env=command_env(tmp_path, threads=1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    whole = train("trainer.max_epochs=2", f"hydra.run.dir={a}")
    first = train("trainer.max_epochs=1", f"hydra.run.dir={b}")
    for proc in (first, whole):
        output = proc.communicate(timeout=600)[0]
        assert proc.returncode == 0, output[-3000:]
    second = train("trainer.max_epochs=2", "ckpt_path=last", f"hydra.run.dir={b}")
    output = second.communicate(timeout=600)[0]
    assert second.returncode == 0, output[-3000:]

    ckpt_a, ckpt_b = (torch.load(r / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True) for r in (a, b))
    assert ckpt_a["global_step"] == ckpt_b["global_step"] > 0
    assert all(torch.equal(ckpt_a["state_dict"][k], ckpt_b["state_dict"][k]) for k in ckpt_a["state_dict"])
    assert _comparable(a) == _comparable(b)
    assert _curve(a) == _curve(b)

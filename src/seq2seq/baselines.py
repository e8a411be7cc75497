"""Extractive summarization baselines: ``python -m seq2seq.baselines lead3 data=NAME [data.root=DIR] [split=val]``.

Runs Lead-n (:mod:`seq2seq.models.lead`) on a split and scores it with validation's ROUGE, so a
model's ``val/rouge*`` and the baseline's compare directly. Writes ``metrics.json`` and
``hypotheses.{split}.txt`` into its run folder. Options (``conf/baselines.yaml``): ``split``
(val or test), ``n`` (3), ``unit`` (``auto``: turns when most sources look like dialogues, else sentences).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from seq2seq.config import config_dir, user_errors_exit
from seq2seq.errors import ConfigError
from seq2seq.metrics.text_metrics import score
from seq2seq.models.lead import BASELINES, lead_n
from seq2seq.run_summary import finish_run
from seq2seq.utils.io import atomic_write_text


def run_baseline(cfg: DictConfig) -> dict:
    """Run ``cfg.baseline`` on ``cfg.split`` of ``cfg.data``; returns what was written to metrics.json."""
    start = time.perf_counter()
    name = cfg.get("baseline")
    if name not in BASELINES:
        raise ConfigError(f"baseline={name!r}: use one of {', '.join(BASELINES)}")
    if cfg.get("data") is None:
        raise ConfigError("data=NAME is required (e.g. data=samsum data.root=DIR)")
    split = cfg.get("split", "val")
    if split not in ("val", "test"):
        raise ConfigError(f"split={split!r}: use val or test")
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    datamodule = instantiate(data_cfg)
    sources, _ = datamodule.texts(split)
    references = datamodule.reference_streams(split)  # with data.extra_references, if any
    n = int(cfg.get("n", 3))
    hypotheses, unit = lead_n(sources, n, cfg.get("unit", "auto"))
    scores, signatures = score("summarization", hypotheses, references)
    output_dir = Path(cfg.paths.output_dir)
    hyp_file = output_dir / f"hypotheses.{split}.txt"
    atomic_write_text(hyp_file, "".join(f"{h}\n" for h in hypotheses))
    return finish_run(
        output_dir, {f"{split}/{key}": value for key, value in scores.items()}, title=f"{name} ({unit}) on {split}",
        baseline=name, n=n, unit=unit, **signatures, split=split,
        data={k: data_cfg.get(k) for k in ("root", "src_lang", "tgt_lang", "format", "hf_path")},
        num_summaries=len(hypotheses), hypotheses=str(hyp_file), wall_time_s=round(time.perf_counter() - start, 2),
    )


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="baselines")
@user_errors_exit
def _hydra_main(cfg: DictConfig) -> float:
    payload = run_baseline(cfg)
    return payload[f"{cfg.split}/rougeLsum"]


def main() -> None:
    """``python -m seq2seq.baselines lead3 key=value ...``: a leading bare name means ``baseline=NAME``."""
    if len(sys.argv) > 1 and not sys.argv[1].startswith("-") and "=" not in sys.argv[1]:
        sys.argv[1] = f"baseline={sys.argv[1]}"
    _hydra_main()


if __name__ == "__main__":
    main()

"""Extractive summarization baselines: ``python -m seq2seq.baselines lead3 data=NAME [data.root=DIR] [split=val]``.

Lead-3 takes the first three sentences of a document (See et al., 2017) or, for a dialogue, its
first three turns (Gliwa et al., 2019, report it on SAMSum). The output is scored with the same
ROUGE as validation (:func:`seq2seq.metrics.text_metrics.rouge_scores`), so a model's
``val/rouge*`` and the baseline's compare directly. Writes into its run folder
(``outputs/baselines/runs/...``):

* ``metrics.json``: ``{split}/rouge1``, ``{split}/rouge2``, ``{split}/rougeL``, ``{split}/rougeLsum``
  (0-100), the ROUGE signature, the unit used (sentences or turns), the corpus and the split;
* ``hypotheses.{split}.txt``: one summary per line, in corpus order.

Options (Hydra overrides, see ``conf/baselines.yaml``): ``split`` (val or test), ``n`` (3),
``unit`` (``auto``: turns when most sources look like dialogues, else sentences).

Dialogue turns. SAMSum's files hold one dialogue per line, the turns joined by spaces:
``Amanda: I baked cookies. Do you want some? Jerry: Sure!``. :func:`split_turns` starts a turn at
every ``Name:`` (a word starting with a capital letter, or the first speaker's name as written,
possibly several words), directly followed by a colon, or by a space and a colon and whitespace
(so that ``Wow :)`` is not a turn). A capitalized word
followed by a colon inside a turn (``Note: ...``) is taken for a turn start too; this is rare and
only matters within the first three turns.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from seq2seq.config import config_dir, user_errors_exit
from seq2seq.errors import ConfigError
from seq2seq.metrics.text_metrics import ROUGE_KEYS, rouge_scores, split_sentences
from seq2seq.run_summary import print_metrics_table, write_metrics
from seq2seq.utils.io import atomic_write_text

log = logging.getLogger(__name__)

BASELINES = ("lead3",)
UNITS = ("auto", "sentences", "turns")

# A speaker name: one word starting with a capital letter (``Amanda``, ``O'Neil``, ``J.J.``).
_NAME = r"[A-Z][\w.'\u2019&-]*"
# The colon right after the name, or after a space when whitespace follows (not the emoticon ``Wow :)``).
_COLON = r"(?::|\s:(?=\s|$))"
_FIRST_SPEAKER = re.compile(rf"\s*([^\s:][^:\n]{{0,40}}?){_COLON}")


def split_turns(dialogue: str) -> list[str]:
    """The turns of a one-line dialogue (``Name: text Name: text ...``), each with its speaker."""
    text = dialogue.strip()
    names = [_NAME]
    first = _FIRST_SPEAKER.match(text)
    if first:
        names.insert(0, re.escape(first.group(1)))  # tried first: a multi-word name stays whole
    starts = [m.start() for m in re.finditer(rf"(?:^|(?<=\s))(?:{'|'.join(names)}){_COLON}", text)]
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    bounds = starts + [len(text)]
    return [text[a:b].strip() for a, b in zip(bounds, bounds[1:]) if text[a:b].strip()]


def looks_like_dialogue(sources: Sequence[str], sample: int = 200) -> bool:
    """Whether most sources (of the first ``sample``) start with ``Name:`` and have several turns."""
    texts = [s for s in sources[:sample] if s.strip()]
    if not texts:
        return False
    hits = sum(1 for s in texts if _FIRST_SPEAKER.match(s) and len(split_turns(s)) > 1)
    return hits > len(texts) / 2


def lead(source: str, n: int = 3, unit: str = "sentences") -> str:
    """The first ``n`` sentences (or turns) of ``source``, joined by spaces."""
    if unit not in ("sentences", "turns"):
        raise ConfigError(f"unit={unit!r}: use sentences or turns")
    parts = split_turns(source) if unit == "turns" else split_sentences(source)
    return " ".join(p.replace("\n", " ") for p in parts[:n])


def lead_n(sources: Sequence[str], n: int = 3, unit: str = "auto") -> tuple[list[str], str]:
    """Lead-``n`` of every source; returns (summaries, the unit used)."""
    if unit not in UNITS:
        raise ConfigError(f"unit={unit!r}: use one of {', '.join(UNITS)}")
    if n < 1:
        raise ConfigError(f"n={n} must be at least 1")
    if unit == "auto":
        unit = "turns" if looks_like_dialogue(sources) else "sentences"
    return [lead(s, n, unit) for s in sources], unit


def run_baseline(cfg: DictConfig) -> dict:
    """Run ``cfg.baseline`` on ``cfg.split`` of ``cfg.data``; returns what was written to metrics.json."""
    from seq2seq.eval import read_split

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
    sources, references = read_split(datamodule, split)
    n = int(cfg.get("n", 3))
    hypotheses, unit = lead_n(sources, n, cfg.get("unit", "auto"))
    scores = rouge_scores(hypotheses, references)

    output_dir = Path(cfg.paths.output_dir)
    hyp_file = output_dir / f"hypotheses.{split}.txt"
    atomic_write_text(hyp_file, "".join(f"{h}\n" for h in hypotheses))
    metrics = {f"{split}/{key}": scores[key] for key in ROUGE_KEYS}
    payload = write_metrics(
        output_dir / "metrics.json",
        metrics,
        baseline=name,
        n=n,
        unit=unit,
        rouge_signature=scores["rouge_signature"],
        split=split,
        data={k: data_cfg.get(k) for k in ("root", "src_lang", "tgt_lang", "format", "hf_path")},
        num_summaries=len(hypotheses),
        hypotheses=str(hyp_file),
        wall_time_s=round(time.perf_counter() - start, 2),
        run_dir=str(output_dir),
    )
    print_metrics_table(metrics, title=f"{name} ({unit}) on {split}")
    print(f"Run folder: {output_dir}")
    return payload


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

"""Evaluation entry point: ``python -m seq2seq.eval ckpt_path=PATH [data=NAME] [split=val] [decoding=beam]``,
or ``python -m seq2seq.eval hyp_file=FILE data=NAME [data.root=DIR] [split=test]`` to score existing
hypotheses (another system's, or an earlier run's) exactly as our own are scored.

Loads a checkpoint (model and tokenizer come from the checkpoint alone), decodes a split of a data
config with the ``decoding`` group (greedy, beam or sampling), and writes into its run folder:

* ``metrics.json``: ``{split}/bleu``, ``{split}/chrf``, ``{split}/bleu_tok_lc`` (tokenized, lowercased;
  summarization: ``{split}/rouge1``, ``rouge2``, ``rougeL``, ``rougeLsum`` and the ROUGE signature),
  ``{split}/loss`` and ``{split}/ppl`` (per target token, teacher-forced), the sacreBLEU signatures
  (``sacrebleu_signature``, and ``signatures: {split: {bleu, chrf, bleu_tok_lc}}`` as training writes
  them), ``num_parameters``, ``ckpt_path``, the decoding options, the corpus, timings and the device;
* ``hypotheses.{split}.txt``: the best hypothesis of every source, one line each, in corpus order,
  with its record ``hypotheses.{split}.json`` (the references' files and digest, the decoding
  settings, the checkpoint: :mod:`seq2seq.analysis.hypotheses`); and ``hypotheses.{split}.nbest.txt``,
  ``index<TAB>rank<TAB>score<TAB>text`` lines as ``seq2seq.translate`` writes them, when ``n_best > 1``.

The task (``task=translation|summarization``) defaults to the training run's. Without
``data=...`` the data config is the one of the run the checkpoint comes from (its
``.hydra/config.yaml``); its relative paths mean what they meant to training, so run eval from the
same folder (or with the same ``SEQ2SEQ_ROOT``). Batches are formed exactly as in training's validation and test
(:meth:`Seq2SeqDataModule.eval_dataloader`), so greedy decoding reproduces the BLEU training
reported for the same checkpoint. Several checkpoints sharing one tokenizer, ``'ckpt_path=[A,B]'``
(a Hydra list), are evaluated as an ensemble (:mod:`seq2seq.decoding.ensemble`); without ``data``
the first checkpoint's run config is used. User errors (missing or unreadable checkpoint, missing
split, checkpoints with different tokenizers) print one message and exit with status 2.

BLEU is sacreBLEU's with the tokenizer of the target language (``13a``; ``zh``, ``ja-mecab``,
``ko-mecab`` for Chinese, Japanese, Korean), or the data config's ``bleu_tokenize``, or this
command's ``bleu_tokenize=`` (which wins); every reference of the split counts (the data config's
``extra_references``).

A multilingual checkpoint (:mod:`seq2seq.data.multilingual`) is evaluated on its run's
multilingual data config pair by pair: ``{split}/bleu/en-de``, ``{split}/chrf/en-de``,
``{split}/loss/en-de`` ... and the means ``{split}/bleu``, ``{split}/chrf`` (as validation logs them),
hypotheses in ``hypotheses.{split}.{pair}.txt``; ``tgt_lang=de`` evaluates the pair into German only.
With a one-pair data config (``data=multi30k data.tgt_lang=fr``) it translates into that config's
target language (or ``tgt_lang``, which must match it), and the output is named as for any model.
A checkpoint of one language pair refuses ``tgt_lang`` and multilingual data configs with one message.

``hyp_file=FILE`` skips decoding: FILE holds one detokenized hypothesis per line, line *i* for
source *i* of the split (another line count stops with one message naming the file and both
counts), and is scored against the split's references with the same scorer and settings. The data
config is ``data=NAME``, or, with ``ckpt_path=`` (not loaded), the one of that checkpoint's run; so
``eval hyp_file=F ckpt_path=C`` and ``eval ckpt_path=C`` score on the same references.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from types import SimpleNamespace

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from seq2seq.analysis import hypotheses as hypothesis_files
from seq2seq.config import config_dir, user_errors_exit
from seq2seq.data.datamodule import Seq2SeqDataModule
from seq2seq.data.sources import read_aligned_lines
from seq2seq.data.tokenizer import Tokenizer
from seq2seq.decoding.search import DecodingConfig
from seq2seq.errors import ConfigError
from seq2seq.inference.checkpoint import checkpoint_paths, load_models, resolve_device
from seq2seq.inference.predictor import Predictor
from seq2seq.metrics.text_metrics import (
    bleu_tokenizer,
    check_task,
    score,
    score_by_group,
    signatures_by_metric,
)
from seq2seq.run_summary import finish_run
from seq2seq.utils.io import atomic_write_text
from seq2seq.utils.run_info import git_commit

log = logging.getLogger(__name__)

SPLITS = ("test", "val")


def run_config_of(ckpt_path: Path) -> DictConfig | None:
    """The config (``<run>/.hydra/config.yaml``) of the run folder holding ``ckpt_path``, if any."""
    for folder in list(ckpt_path.resolve().parents)[:4]:
        candidate = folder / ".hydra" / "config.yaml"
        if candidate.is_file():
            log.info("Using the training run's config %s", candidate)
            return OmegaConf.load(candidate)
    return None


def evaluate(cfg: DictConfig) -> dict:
    """Evaluate ``cfg.ckpt_path`` (or score ``cfg.hyp_file``) as ``cfg`` says; returns what was written
    to metrics.json."""
    if cfg.get("hyp_file"):
        return score_hypotheses(cfg)
    start = time.perf_counter()
    if not cfg.get("ckpt_path"):
        raise ConfigError(
            "ckpt_path=PATH is required (e.g. ckpt_path=outputs/train/runs/.../checkpoints/best.ckpt), "
            "or hyp_file=FILE data=NAME to score existing hypotheses"
        )
    split = _split(cfg)
    decoding_options = {**OmegaConf.to_container(cfg.decoding, resolve=True), "n_best": int(cfg.get("n_best", 1))}
    decoding = DecodingConfig.from_mapping(decoding_options)
    device = resolve_device(cfg.get("device", "auto"))
    output_dir = Path(cfg.paths.output_dir)

    paths = [Path(p) for p in checkpoint_paths(cfg.ckpt_path)]
    net, tokenizer = load_models(paths, device)
    task, datamodule, about = _data_of(cfg, paths[0])
    jobs = _jobs(cfg, datamodule, tokenizer)
    if task == "translation":  # every pair's BLEU tokenizer, before anything is decoded
        for _, data, _ in jobs:
            bleu_tokenizer(data.tgt_lang, cfg.get("bleu_tokenize") or data.bleu_tokenize)

    metrics, groups, hyp_files, nll, n_tokens, decode_time, num_sentences = {}, {}, [], 0.0, 0, 0.0, 0
    for name, data, source_tokenizer in jobs:
        loader = data.eval_dataloader(split, source_tokenizer, cfg.get("max_tokens"))
        decode_start = time.perf_counter()
        nbest, pair_nll, pair_tokens = Predictor(net, source_tokenizer, decoding, device).predict_loader(loader)
        decode_time += time.perf_counter() - decode_start
        hypotheses = tokenizer.decode_target([hyps[0].tokens for hyps in nbest])
        nll, n_tokens, num_sentences = nll + pair_nll, n_tokens + pair_tokens, num_sentences + len(hypotheses)
        suffix = f".{name}" if name else ""
        hyp_file = output_dir / f"hypotheses.{split}{suffix}.txt"
        if name:
            atomic_write_text(hyp_file, "".join(f"{h}\n" for h in hypotheses))
        else:  # with its record (references, decoding, checkpoint): what `report --baseline` compares
            hypothesis_files.write(output_dir, split, hypotheses, data.reference_streams(split), datamodule=data,
                                   decoding=decoding_options, task=task, checkpoint=", ".join(str(p) for p in paths),
                                   bleu_tokenize=cfg.get("bleu_tokenize") or data.bleu_tokenize)
        hyp_files.append(str(hyp_file))
        if decoding.n_best > 1:
            lines = [
                f"{i}\t{rank}\t{h.score:.6f}\t{text}"
                for i, hyps in enumerate(nbest)
                for rank, (h, text) in enumerate(zip(hyps, tokenizer.decode_target([h.tokens for h in hyps])), 1)
            ]
            atomic_write_text(output_dir / f"hypotheses.{split}{suffix}.nbest.txt", "".join(f"{line}\n" for line in lines))
        groups[name] = (hypotheses, data)
        if name:
            loss = pair_nll / max(pair_tokens, 1)
            metrics.update({f"{split}/loss/{name}": loss, f"{split}/ppl/{name}": math.exp(min(loss, 50.0))})
    scores, signatures = _score_groups(cfg, task, groups, split)
    loss = nll / max(n_tokens, 1)
    metrics = {**{f"{split}/{k}": v for k, v in scores.items()}, f"{split}/loss": loss, f"{split}/ppl": math.exp(min(loss, 50.0)),
               **metrics}
    pairs = {"pairs": [name for name in groups]} if jobs[0][0] else {}

    return finish_run(
        output_dir, metrics, title=f"{' + '.join(p.name for p in paths)} on {split}", **signatures,
        signatures={split: signatures_by_metric(signatures)}, task=task, num_parameters=net.num_parameters(), split=split,
        ckpt_path=str(paths[0].resolve()) if len(paths) == 1 else [str(p.resolve()) for p in paths],
        decoding=decoding_options, data=about, **pairs, num_sentences=num_sentences,
        hypotheses=hyp_files[0] if len(hyp_files) == 1 else hyp_files,
        decode_time_s=decode_time, sentences_per_s=num_sentences / decode_time if decode_time > 0 else None,
        wall_time_s=time.perf_counter() - start, device=str(device), git_commit=git_commit(),
        **({"tgt_lang": cfg.get("tgt_lang")} if cfg.get("tgt_lang") else {}),
    )


def _multilingual(datamodule) -> bool:
    return isinstance(getattr(datamodule, "pairs", None), dict)


def _jobs(cfg: DictConfig, datamodule, tokenizer: Tokenizer) -> list[tuple[str | None, Seq2SeqDataModule, Tokenizer]]:
    """What to decode: ``(pair name or None, its DataModule, the tokenizer its sources are encoded with)``.

    A multilingual data config gives its pairs (or the one into ``tgt_lang``), each with the
    checkpoint's tokenizer for that target language; a one-pair config gives itself, with the tag of
    its target language for a multilingual checkpoint. Every mismatch is one :class:`ConfigError`."""
    tgt_lang = cfg.get("tgt_lang") or None
    if _multilingual(datamodule):
        if not tokenizer.target_tags:
            raise ConfigError(
                f"the data config is multilingual (pairs {', '.join(datamodule.pairs)}) but the checkpoint translates "
                "one language pair (it has no target-language tags); evaluate it with a one-pair data config (data=NAME)"
            )
        selected = [datamodule.pair(tgt_lang)] if tgt_lang else list(datamodule.pairs.items())
        return [(name, data, tokenizer.for_target(data.tgt_lang)) for name, data in selected]
    if tokenizer.target_tags:
        if tgt_lang and tgt_lang != datamodule.tgt_lang:
            raise ConfigError(
                f"tgt_lang={tgt_lang} but the data config's target language is {datamodule.tgt_lang}: its references "
                f"are {datamodule.tgt_lang}; set data.tgt_lang={tgt_lang} (or leave tgt_lang out)"
            )
        return [(None, datamodule, tokenizer.for_target(datamodule.tgt_lang))]
    return [(None, datamodule, tokenizer.for_target(tgt_lang))]  # a one-pair model: tgt_lang refused


def score_hypotheses(cfg: DictConfig) -> dict:
    """Score ``cfg.hyp_file`` (one hypothesis per line, in corpus order) against the references of
    ``cfg.split`` as :func:`evaluate` scores decoded ones; returns what was written to metrics.json."""
    start = time.perf_counter()
    split, hyp_file = _split(cfg), Path(cfg.hyp_file)
    ckpt = checkpoint_paths(cfg.ckpt_path)[0] if cfg.get("ckpt_path") else None
    task, datamodule, about = _data_of(cfg, Path(ckpt) if ckpt else None)
    name = None
    if _multilingual(datamodule):  # a file holds one pair's hypotheses
        if not cfg.get("tgt_lang"):
            raise ConfigError(
                f"hyp_file= scores one pair of a multilingual data config: choose it with tgt_lang= "
                f"(pairs {', '.join(datamodule.pairs)})"
            )
        name, datamodule = datamodule.pair(cfg.tgt_lang)
        bleu_tokenizer(datamodule.tgt_lang, cfg.get("bleu_tokenize") or datamodule.bleu_tokenize)
    sources, _ = datamodule.texts(split)
    hypotheses = read_aligned_lines(hyp_file, len(sources), f"the {split} split under {datamodule.root}")
    scores, signatures = _score_groups(cfg, task, {name: (hypotheses, datamodule)}, split)
    return finish_run(
        cfg.paths.output_dir, {f"{split}/{k}": v for k, v in scores.items()}, title=f"{hyp_file.name} on {split}",
        **signatures, signatures={split: signatures_by_metric(signatures)}, task=task, split=split,
        hyp_file=str(hyp_file.resolve()), data=about, num_sentences=len(hypotheses),
        wall_time_s=time.perf_counter() - start, git_commit=git_commit(),
    )


def _split(cfg: DictConfig) -> str:
    split = cfg.get("split", "test")
    if split not in SPLITS:
        raise ConfigError(f"split={split!r}: use one of {', '.join(SPLITS)}")
    return split


def _data_of(cfg: DictConfig, ckpt: Path | None) -> tuple[str, Seq2SeqDataModule, dict]:
    """(task, DataModule, what metrics.json says of the corpus) of ``cfg.data``, or of the config of
    the run ``ckpt`` comes from; checks that the BLEU tokenizer can run before anything is decoded."""
    run_cfg = run_config_of(ckpt) if ckpt is not None else None
    task = check_task(cfg.get("task") or (run_cfg.get("task") if run_cfg is not None else None) or "translation")
    if cfg.get("data") is None and run_cfg is None:
        where = f"{ckpt} is not inside a run folder with .hydra/config.yaml" if ckpt else "hyp_file= needs one"
        raise ConfigError(f"no data config: {where}; pass data=NAME (e.g. data=toy data.root=DIR)")
    # A run's interpolations (${paths.data_dir}, ${seed}) resolve against its own config.
    data_cfg = OmegaConf.to_container(cfg.data if cfg.get("data") is not None else run_cfg.data, resolve=True)
    datamodule = instantiate(data_cfg)
    if task == "translation":
        bleu_tokenizer(datamodule.tgt_lang, cfg.get("bleu_tokenize") or datamodule.bleu_tokenize)
    return task, datamodule, {k: data_cfg.get(k) for k in ("root", "src_lang", "tgt_lang", "format")}


def _score(cfg: DictConfig, task: str, hypotheses: list[str], datamodule: Seq2SeqDataModule, split: str):
    """``score`` against every reference of ``split``, BLEU tokenized as the command or data config says."""
    return score(task, hypotheses, datamodule.reference_streams(split), datamodule.tgt_lang,
                 cfg.get("bleu_tokenize") or datamodule.bleu_tokenize)


def _score_groups(cfg: DictConfig, task: str, groups: dict, split: str):
    """``{None: (hypotheses, DataModule)}``: :func:`_score`; ``{pair: ...}``: each pair alone and the
    means (``bleu/en-de``, ..., ``bleu``), as validation scores a multilingual model."""
    if list(groups) == [None]:
        hypotheses, datamodule = groups[None]
        return _score(cfg, task, hypotheses, datamodule, split)
    return score_by_group(task, {
        name: SimpleNamespace(hypotheses=hypotheses, references=data.reference_streams(split), tgt_lang=data.tgt_lang,
                              bleu_tokenize=cfg.get("bleu_tokenize") or data.bleu_tokenize)
        for name, (hypotheses, data) in groups.items()
    })


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
@user_errors_exit
def main(cfg: DictConfig) -> float:
    """Console script ``seq2seq-eval``; returns ``{split}/bleu`` (``{split}/rougeLsum`` for
    summarization), so that sweeps can use it."""
    payload = evaluate(cfg)
    return payload.get(f"{cfg.split}/bleu", payload.get(f"{cfg.split}/rougeLsum"))


if __name__ == "__main__":
    main()

"""``seq2seq-eval``: decode a split of a data config with a checkpoint (or an ensemble) and score it,
or score a file of hypotheses (``hyp_file=``) exactly as our own are scored.

    seq2seq-eval ckpt_path=PATH [data=NAME] [split=val] [decoding=beam] [tgt_lang=LANG]
    seq2seq-eval hyp_file=FILE data=NAME [data.root=DIR] [split=test]

Batches are formed as validation forms them, so greedy decoding reproduces the scores training
reported; without ``data=`` the data config is the checkpoint's run's. Writes ``metrics.json`` and
``hypotheses.{split}[.{pair}].txt`` into its run folder (a multilingual data config: each pair and
their means); docs/decoding.md describes the outputs and errors.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from seq2seq.analysis import hypotheses as hypothesis_files
from seq2seq.config import config_dir, user_errors_exit
from seq2seq.data.corpus import Corpus
from seq2seq.data.datamodule import LEGACY_TARGETS, Seq2SeqDataModule
from seq2seq.data.sources import read_aligned_lines
from seq2seq.data.tokenizer import Tokenizer
from seq2seq.decoding.search import LENGTH_PENALTIES, DecodingConfig, rerank
from seq2seq.errors import ConfigError
from seq2seq.inference.checkpoint import checkpoint_paths, load_models, resolve_device
from seq2seq.inference.predictor import Predictor
from seq2seq.inference.quantize import pack_linear_layers
from seq2seq.metrics.text_metrics import (
    PairOutputs,
    bleu_tokenizer,
    check_task,
    score_by_group,
    signatures_by_metric,
)
from seq2seq.run_summary import finish_run
from seq2seq.utils.io import atomic_write_text
from seq2seq.utils.run_info import git_commit

log = logging.getLogger(__name__)

SPLITS = ("test", "val")


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
    penalties = length_penalties(cfg.get("length_penalties"), decoding)
    search = replace(decoding, n_best=max(decoding.n_best, decoding.beam_size)) if penalties else decoding
    device = resolve_device(cfg.get("device", "auto"))
    output_dir = Path(cfg.paths.output_dir)

    paths = [Path(p) for p in checkpoint_paths(cfg.ckpt_path)]
    net, tokenizer = load_models(paths, device)
    net = pack_linear_layers(net, device)
    task, datamodule, about = _data_of(cfg, paths[0])
    jobs = _jobs(cfg, datamodule, tokenizer)
    metrics, groups, hyp_files, nll, n_tokens, decode_time = {}, {}, [], 0.0, 0, 0.0
    reranked: dict[str, dict] = {setting: {} for setting in penalties}
    for name, data, source_tokenizer in jobs:
        loader = datamodule.eval_dataloader(split, source_tokenizer, cfg.get("max_tokens"), corpus=name)
        decode_start = time.perf_counter()
        nbest, pair_nll, pair_tokens = Predictor(net, source_tokenizer, search, device).predict_loader(loader)
        decode_time += time.perf_counter() - decode_start
        for setting, (kind, alpha) in penalties.items():  # one search, each penalty's choice among its n-best
            best = [rerank(hyps, alpha, kind)[0].tokens for hyps in nbest]
            reranked[setting][name] = (tokenizer.decode_target(best), data)
        nbest = [hyps[: decoding.n_best] for hyps in nbest]
        hypotheses = tokenizer.decode_target([hyps[0].tokens for hyps in nbest])
        nll, n_tokens = nll + pair_nll, n_tokens + pair_tokens
        suffix = f".{name}" if name else ""
        hyp_file = output_dir / f"hypotheses.{split}{suffix}.txt"
        if name:
            atomic_write_text(hyp_file, "".join(f"{h}\n" for h in hypotheses))
        else:  # with its record (references, decoding, checkpoint): what `report --baseline` compares
            hypothesis_files.write(output_dir, split, hypotheses, data.reference_streams(split), corpus=data,
                                   decoding=decoding_options, task=task, checkpoint=", ".join(str(p) for p in paths),
                                   bleu_tokenize=cfg.get("bleu_tokenize") or data.bleu_tokenize)
        hyp_files.append(str(hyp_file))
        if decoding.n_best > 1:
            atomic_write_text(output_dir / f"hypotheses.{split}{suffix}.nbest.txt", "".join(
                f"{i}\t{rank}\t{h.score:.6f}\t{text}\n"
                for i, hyps in enumerate(nbest)
                for rank, (h, text) in enumerate(zip(hyps, tokenizer.decode_target([h.tokens for h in hyps])), 1)
            ))
        groups[name] = (hypotheses, data)
        if name:
            loss = pair_nll / max(pair_tokens, 1)
            metrics.update({f"{split}/loss/{name}": loss, f"{split}/ppl/{name}": math.exp(min(loss, 50.0))})
    scores, signatures = _score_groups(cfg, task, groups, split)
    for setting, setting_groups in reranked.items():
        setting_scores, _ = _score_groups(cfg, task, setting_groups, split)
        scores.update({f"length_penalty/{setting}/{k}": v for k, v in setting_scores.items() if "/" not in k})
    loss = nll / max(n_tokens, 1)
    metrics = {**{f"{split}/{k}": v for k, v in scores.items()}, f"{split}/loss": loss, f"{split}/ppl": math.exp(min(loss, 50.0)),
               **metrics}
    pairs = {"pairs": list(groups)} if jobs[0][0] else {}
    num_sentences = sum(len(hypotheses) for hypotheses, _ in groups.values())
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


def length_penalties(settings, decoding: DecodingConfig) -> dict[str, tuple[str, float]]:
    """``length_penalties=[gnmt:0.6,average:1.0]`` as ``{"gnmt_0.6": ("gnmt", 0.6), ...}`` (beam search only)."""
    if not settings:
        return {}
    if decoding.strategy != "beam":
        raise ConfigError(f"length_penalties compares the rankings of one beam search: use decoding=beam "
                          f"(decoding.strategy is {decoding.strategy})")
    parsed = {}
    for setting in settings:
        kind, _, alpha = str(setting).partition(":")
        try:
            parsed[f"{kind}_{float(alpha):g}"] = (kind, float(alpha))
        except ValueError:
            kind = "?"
        if kind not in LENGTH_PENALTIES:
            raise ConfigError(f"length_penalties: {setting!r} is not KIND:ALPHA with KIND one of "
                              f"{', '.join(LENGTH_PENALTIES)} (e.g. gnmt:0.6, average:1.0)")
    return parsed


def _jobs(cfg: DictConfig, datamodule: Seq2SeqDataModule, tokenizer: Tokenizer) -> list[tuple[str | None, Corpus, Tokenizer]]:
    """What to decode: ``(pair name or None, its corpus, the tokenizer its sources are encoded with)``:
    a multilingual data config's pairs (or the one into ``tgt_lang``), else the one corpus."""
    tgt_lang = cfg.get("tgt_lang") or None
    if datamodule.multilingual:
        if not tokenizer.target_tags:
            raise ConfigError(
                f"the data config is multilingual (pairs {', '.join(datamodule.corpora)}) but the checkpoint translates "
                "one language pair (it has no target-language tags); evaluate it with a one-pair data config (data=NAME)"
            )
        selected = [datamodule.pair(tgt_lang)] if tgt_lang else list(datamodule.corpora.items())
        return [(name, data, tokenizer.for_target(data.tgt_lang)) for name, data in selected]
    corpus = datamodule.corpora[None]
    if tokenizer.target_tags and tgt_lang and tgt_lang != corpus.tgt_lang:
        raise ConfigError(
            f"tgt_lang={tgt_lang} but the data config's target language is {corpus.tgt_lang}: its references "
            f"are {corpus.tgt_lang}; set data.tgt_lang={tgt_lang} (or leave tgt_lang out)"
        )
    # A multilingual model into the corpus's language; a one-pair model refuses a tgt_lang.
    return [(None, corpus, tokenizer.for_target(corpus.tgt_lang if tokenizer.target_tags else tgt_lang))]


def score_hypotheses(cfg: DictConfig) -> dict:
    """Score ``cfg.hyp_file`` (one hypothesis per line, in corpus order) against the references of
    ``cfg.split`` as :func:`evaluate` scores decoded ones; returns what was written to metrics.json."""
    start = time.perf_counter()
    split, hyp_file = _split(cfg), Path(cfg.hyp_file)
    ckpt = checkpoint_paths(cfg.ckpt_path)[0] if cfg.get("ckpt_path") else None
    task, datamodule, about = _data_of(cfg, Path(ckpt) if ckpt else None)
    name, corpus = None, datamodule.corpora.get(None)
    if datamodule.multilingual:  # a file holds one pair's hypotheses
        if not cfg.get("tgt_lang"):
            raise ConfigError(
                f"hyp_file= scores one pair of a multilingual data config: choose it with tgt_lang= "
                f"(pairs {', '.join(datamodule.corpora)})"
            )
        name, corpus = datamodule.pair(cfg.tgt_lang)
    sources, _ = corpus.texts(split)
    hypotheses = read_aligned_lines(hyp_file, len(sources), f"the {split} split under {corpus.root}")
    scores, signatures = _score_groups(cfg, task, {name: (hypotheses, corpus)}, split)
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
    the run ``ckpt`` comes from (``<run>/.hydra/config.yaml`` up to 4 folders above it); checks that every
    pair's BLEU tokenizer can run before anything is decoded."""
    configs = [folder / ".hydra" / "config.yaml" for folder in list(ckpt.resolve().parents)[:4]] if ckpt else []
    run_config = next((path for path in configs if path.is_file()), None)
    run_cfg = OmegaConf.load(run_config) if run_config is not None else None
    if run_config is not None:
        log.info("Using the training run's config %s", run_config)
    task = check_task(cfg.get("task") or (run_cfg.get("task") if run_cfg is not None else None) or "translation")
    if cfg.get("data") is None and run_cfg is None:
        where = f"{ckpt} is not inside a run folder with .hydra/config.yaml" if ckpt else "hyp_file= needs one"
        raise ConfigError(f"no data config: {where}; pass data=NAME (e.g. data=toy data.root=DIR)")
    # A run's interpolations (${paths.data_dir}, ${seed}) resolve against its own config.
    data_cfg = OmegaConf.to_container(cfg.data if cfg.get("data") is not None else run_cfg.data, resolve=True)
    data_cfg["_target_"] = LEGACY_TARGETS.get(data_cfg.get("_target_"), data_cfg.get("_target_"))
    datamodule = instantiate(data_cfg)
    if task == "translation":
        for corpus in datamodule.corpora.values():
            bleu_tokenizer(corpus.tgt_lang, cfg.get("bleu_tokenize") or corpus.bleu_tokenize)
    return task, datamodule, {k: data_cfg.get(k) for k in ("root", "src_lang", "tgt_lang", "format")}


def _score_groups(cfg: DictConfig, task: str, groups: dict[str | None, tuple[list[str], Corpus]], split: str):
    """``score_by_group`` of ``{name: (hypotheses, corpus)}`` against every reference of ``split``, BLEU
    tokenized as the command or data config says (pairs: ``bleu/en-de``, ..., and the means, ``bleu``)."""
    return score_by_group(task, {
        name: PairOutputs(hypotheses, data.reference_streams(split), data.tgt_lang,
                          cfg.get("bleu_tokenize") or data.bleu_tokenize)
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

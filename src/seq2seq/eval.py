"""Evaluation entry point: ``python -m seq2seq.eval ckpt_path=PATH [data=NAME] [split=val] [decoding=beam]``.

Loads a checkpoint (model and tokenizer come from the checkpoint alone), decodes a split of a data
config with the ``decoding`` group (greedy, beam or sampling), and writes into its run folder:

* ``metrics.json``: ``{split}/bleu``, ``{split}/chrf`` (summarization: ``{split}/rouge1``,
  ``rouge2``, ``rougeL``, ``rougeLsum`` and the ROUGE signature), ``{split}/loss`` and
  ``{split}/ppl`` (per target token, teacher-forced), the sacreBLEU signatures, ``num_parameters``, ``ckpt_path``, the
  decoding options, the corpus, timings and the device;
* ``hypotheses.{split}.txt``: the best hypothesis of every source, one line each, in corpus order
  (and ``hypotheses.{split}.nbest.txt``, ``index<TAB>rank<TAB>score<TAB>text`` lines as
  ``seq2seq.translate`` writes them, when ``n_best > 1``).

The task (``task=translation|summarization``) defaults to the training run's. Without
``data=...`` the data config is the one of the run the checkpoint comes from (its
``.hydra/config.yaml``); its relative paths mean what they meant to training, so run eval from the
same folder (or with the same ``SEQ2SEQ_ROOT``). Batches are formed exactly as in training's validation and test (same
tokenization, truncation and token budget), so greedy decoding reproduces the BLEU training
reported for the same checkpoint. User errors (missing or unreadable checkpoint, missing split)
print one message and exit with status 2.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from seq2seq.config import config_dir, user_errors_exit
from seq2seq.data.datamodule import PairDataset, Seq2SeqDataModule, TokenizedSplit, collate
from seq2seq.data.sampler import TokenBudgetBatchSampler
from seq2seq.data.tokenizer import Tokenizer
from seq2seq.decoding.search import DecodingConfig, generate
from seq2seq.errors import ConfigError, DataError
from seq2seq.metrics.text_metrics import ROUGE_KEYS, rouge_scores, translation_scores
from seq2seq.models.transformer import Seq2SeqTransformer
from seq2seq.run_summary import print_metrics_table, write_metrics
from seq2seq.translate import load_checkpoint, resolve_device
from seq2seq.utils.io import atomic_write_text
from seq2seq.utils.run_info import git_commit

log = logging.getLogger(__name__)

SPLITS = ("test", "val")


def run_config_of(ckpt_path: Path) -> Path | None:
    """``<run>/.hydra/config.yaml`` of the run folder holding ``ckpt_path`` (a few levels up), if any."""
    for folder in list(ckpt_path.resolve().parents)[:4]:
        candidate = folder / ".hydra" / "config.yaml"
        if candidate.is_file():
            return candidate
    return None


def data_config(cfg: DictConfig) -> dict:
    """The data config to evaluate on: ``cfg.data`` if given, else the checkpoint's run's."""
    if cfg.get("data") is not None:
        return OmegaConf.to_container(cfg.data, resolve=True)
    saved = run_config_of(Path(cfg.ckpt_path))
    if saved is None:
        raise ConfigError(
            f"no data config: {cfg.ckpt_path} is not inside a run folder with .hydra/config.yaml; "
            "pass data=NAME (e.g. data=toy data.root=DIR)"
        )
    log.info("Evaluating on the data config of %s", saved)
    run_cfg = OmegaConf.load(saved)
    # Interpolations (${paths.data_dir}, ${seed}) resolve against the training run's own config.
    return OmegaConf.to_container(run_cfg.data, resolve=True)


def task_of(cfg: DictConfig) -> str:
    """``cfg.task`` if given, else the task of the checkpoint's run (translation when unknown)."""
    task = cfg.get("task")
    if task is None:
        saved = run_config_of(Path(cfg.ckpt_path))
        task = OmegaConf.load(saved).get("task") if saved is not None else None
    task = task or "translation"
    if task not in ("translation", "summarization"):
        raise ConfigError(f"task={task!r}: use translation or summarization")
    return task


def read_split(datamodule: Seq2SeqDataModule, split: str) -> tuple[list[str], list[str]]:
    """(sources, references) of ``split``, generating or downloading the corpus first if it says so."""
    datamodule._materialize()
    texts = datamodule._read(split)
    if texts is None:
        raise DataError(
            f"no {split} split under {datamodule.root} (looked for {getattr(datamodule.splits, split)}); "
            "evaluate split=val, or set data.splits.test"
        )
    return texts.src_text, texts.tgt_text


def eval_loader(tokenizer: Tokenizer, datamodule: Seq2SeqDataModule, sources: list[str],
                references: list[str], max_tokens: int | None = None) -> DataLoader:
    """Batches as training's validation/test makes them: same ids, truncation, order and budget."""
    data = TokenizedSplit.from_lists(tokenizer.encode_source(sources), tokenizer.encode_target(references))
    dataset = PairDataset(data, max_src_len=datamodule.max_src_len + 1)
    sampler = TokenBudgetBatchSampler(
        data.src_lengths, data.tgt_lengths + 1, max_tokens or datamodule.eval_max_tokens,
        shuffle=False, seed=datamodule.seed,
    )
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)


@torch.inference_mode()
def decode_split(net: Seq2SeqTransformer, loader: DataLoader, decoding: DecodingConfig,
                 device: torch.device) -> dict[str, Any]:
    """Decode every batch; returns n-best lists and summed NLL/tokens, in corpus order."""
    pad = net.config.pad_id
    nbest: dict[int, list] = {}
    nll, n_tokens = 0.0, 0
    for batch in loader:
        src, tgt_in, tgt_out = (batch[k].to(device) for k in ("src", "tgt_in", "tgt_out"))
        logits = net(src, tgt_in)
        nll += float(torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(), tgt_out.reshape(-1), ignore_index=pad, reduction="sum"))
        n_tokens += int((tgt_out != pad).sum())
        for index, hyps in zip(batch["index"].tolist(), generate(net, src, decoding)):
            nbest[index] = hyps
    order = sorted(nbest)
    return {"nbest": [nbest[i] for i in order], "nll": nll, "n_tokens": n_tokens}


def evaluate(cfg: DictConfig) -> dict:
    """Evaluate ``cfg.ckpt_path`` as ``cfg`` says; returns what was written to metrics.json."""
    start = time.perf_counter()
    if not cfg.get("ckpt_path"):
        raise ConfigError("ckpt_path=PATH is required (e.g. ckpt_path=outputs/train/runs/.../checkpoints/best.ckpt)")
    split = cfg.get("split", "test")
    if split not in SPLITS:
        raise ConfigError(f"split={split!r}: use one of {', '.join(SPLITS)}")
    decoding_options = {**OmegaConf.to_container(cfg.decoding, resolve=True), "n_best": int(cfg.get("n_best", 1))}
    decoding = DecodingConfig.from_mapping(decoding_options).validate()
    device = resolve_device(cfg.get("device", "auto"))
    output_dir = Path(cfg.paths.output_dir)

    # Network and tokenizer from the checkpoint alone (translate's loader: weights_only, no Lightning).
    net, tokenizer = load_checkpoint(cfg.ckpt_path, device)
    task = task_of(cfg)
    data_cfg = data_config(cfg)
    datamodule: Seq2SeqDataModule = instantiate(data_cfg)
    sources, references = read_split(datamodule, split)
    loader = eval_loader(tokenizer, datamodule, sources, references, cfg.get("max_tokens"))

    decode_start = time.perf_counter()
    result = decode_split(net, loader, decoding, device)
    decode_time = time.perf_counter() - decode_start
    best = [hyps[0] for hyps in result["nbest"]]
    hypotheses = tokenizer.decode_target([h.tokens for h in best])
    loss = result["nll"] / max(result["n_tokens"], 1)
    if task == "summarization":
        scores = rouge_scores(hypotheses, references)
        metrics = {f"{split}/{key}": scores[key] for key in ROUGE_KEYS}
        signature = {"rouge": scores["rouge_signature"]}
    else:
        scores = translation_scores(hypotheses, references)
        metrics = {f"{split}/bleu": scores["bleu"], f"{split}/chrf": scores["chrf"]}
        signature = {"sacrebleu_signature": {"bleu": scores["bleu_signature"], "chrf": scores["chrf_signature"]}}
    metrics.update({f"{split}/loss": loss, f"{split}/ppl": math.exp(min(loss, 50.0))})
    hyp_file = output_dir / f"hypotheses.{split}.txt"
    atomic_write_text(hyp_file, "".join(f"{h}\n" for h in hypotheses))
    if decoding.n_best > 1:
        lines = [
            f"{i}\t{rank}\t{h.score:.6f}\t{text}"
            for i, hyps in enumerate(result["nbest"])
            for rank, (h, text) in enumerate(zip(hyps, tokenizer.decode_target([h.tokens for h in hyps])), 1)
        ]
        atomic_write_text(output_dir / f"hypotheses.{split}.nbest.txt", "".join(f"{line}\n" for line in lines))

    payload = write_metrics(
        output_dir / "metrics.json",
        metrics,
        **signature,
        task=task,
        num_parameters=net.num_parameters(),
        ckpt_path=str(Path(cfg.ckpt_path).resolve()),
        split=split,
        decoding=decoding_options,
        data={k: data_cfg.get(k) for k in ("root", "src_lang", "tgt_lang", "format")},
        num_sentences=len(hypotheses),
        hypotheses=str(hyp_file),
        decode_time_s=decode_time,
        sentences_per_s=len(hypotheses) / decode_time if decode_time > 0 else None,
        wall_time_s=time.perf_counter() - start,
        device=str(device),
        git_commit=git_commit(),
        run_dir=str(output_dir),
    )
    print_metrics_table(metrics, title=f"{Path(cfg.ckpt_path).name} on {split}")
    print(f"Run folder: {output_dir}")
    return payload


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
@user_errors_exit
def main(cfg: DictConfig) -> float:
    """Console script ``seq2seq-eval``; returns ``{split}/bleu`` (``{split}/rougeLsum`` for
    summarization), so that sweeps can use it."""
    payload = evaluate(cfg)
    return payload.get(f"{cfg.split}/bleu", payload.get(f"{cfg.split}/rougeLsum"))


if __name__ == "__main__":
    main()

"""The model card (``README.md``) of an exported model, with Hugging Face Hub metadata.

What the card says comes from the export (:mod:`seq2seq.inference.ct2_export` or
:mod:`seq2seq.inference.hf_export`, ``info["format"]``: the model config, parameter count, tokenizer
files; the usage code and file list are the format's) and, when the checkpoint sits in a run folder
(``RUN/checkpoints/*.ckpt``), from that run: ``metrics.json`` (scores and their sacreBLEU or ROUGE
signatures), ``.hydra/config.yaml`` (languages, corpus, tags) and ``.hydra/overrides.yaml`` (the
training command). Nothing is invented: without a run folder the card says the scores are unknown.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import yaml

from seq2seq.metrics.text_metrics import TASK_METRICS, signatures_by_metric

BAR = "\\|"  # | inside a Markdown table cell
EXAMPLES = {"en": "A man in a red shirt is riding a bike down the street.", "de": "Ein Mann fährt mit dem Fahrrad."}


def run_folder(ckpt_path: str | Path | None) -> Path | None:
    """The run folder a checkpoint belongs to (``RUN/checkpoints/x.ckpt`` or ``RUN/x.ckpt``), if any."""
    if ckpt_path is None:
        return None
    path = Path(ckpt_path).resolve()
    for folder in (path.parent.parent, path.parent):
        if (folder / "metrics.json").is_file() or (folder / ".hydra" / "config.yaml").is_file():
            return folder
    return None


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def read_run(run: Path | None) -> tuple[dict, dict, list[str] | None]:
    """``(metrics.json, .hydra/config.yaml, .hydra/overrides.yaml)`` of a run folder; empty when absent."""
    if run is None:
        return {}, {}, None
    metrics: dict = {}
    try:
        metrics = json.loads((run / "metrics.json").read_text())
    except (OSError, ValueError):
        pass
    config = _read_yaml(run / ".hydra" / "config.yaml") or {}
    overrides = _read_yaml(run / ".hydra" / "overrides.yaml")
    return metrics, config if isinstance(config, dict) else {}, overrides if isinstance(overrides, list) else None


def _signature(metrics: dict, name: str, split: str) -> str | None:
    """The signature of ``split``'s ``name`` (metrics.json's ``signatures``), else the run's one."""
    family = "rouge" if name in TASK_METRICS["summarization"] else name
    by_split = ((metrics.get("signatures") or {}).get(split) or {}).get(family)
    run = {k: v for k, v in metrics.items() if k in ("sacrebleu_signature", "rouge_signature") and isinstance(v, dict | str)}
    if isinstance(run.get("sacrebleu_signature"), str):  # one signature for both (runs of an older version)
        run["sacrebleu_signature"] = dict.fromkeys(("bleu", "chrf"), run["sacrebleu_signature"])
    return by_split or signatures_by_metric(run).get(family)


def scores(metrics: dict, task: str) -> list[dict]:
    """Every ``{split}/{metric}`` of the task in ``metrics`` (test first), with its signature."""
    rows = []
    for split in ("test", "val"):
        for name in TASK_METRICS.get(task, ()):
            value = metrics.get(f"{split}/{name}")
            if isinstance(value, int | float):
                rows.append({"split": split, "metric": name, "value": round(float(value), 2),
                             "signature": _signature(metrics, name, split)})
    return rows


def dataset_name(config: dict) -> str | None:
    data = config.get("data") or {}
    if data.get("download") or data.get("dataset"):
        return str(data.get("download") or data["dataset"])
    if data.get("generate"):
        return "toy"
    root = data.get("root")
    return Path(str(root)).name if root and "$" not in str(root) else None


def metadata(info: dict, config: dict, task: str, rows: list[dict], license: str | None) -> dict:
    """The YAML front matter the Hugging Face Hub reads (language, license, tags, datasets, metrics,
    results: ``rows``, :func:`scores`)."""
    data = config.get("data") or {}
    languages = [lang for lang in (data.get("src_lang"), data.get("tgt_lang")) if lang]
    dataset = dataset_name(config)
    transformers = info.get("format") == "transformers"
    tags = ["transformers", info["model_type"]] if transformers else ["ctranslate2"]
    tags += ["seq2seq", "transformer", task]
    tags += [str(t) for t in config.get("tags") or [] if str(t) not in tags]
    if info.get("quantization"):
        tags.append(f"{info['quantization']}")
    meta: dict[str, Any] = {"language": list(dict.fromkeys(languages))} if languages else {}
    meta.update(license=license or "other", library_name="transformers" if transformers else "ctranslate2",
                pipeline_tag=task, tags=tags)
    if dataset:
        meta["datasets"] = [dataset]
    if rows:
        meta["metrics"] = list(dict.fromkeys(r["metric"] for r in rows))
        results = []
        for split in dict.fromkeys(r["split"] for r in rows):
            name = f"{task.capitalize()} {'-'.join(languages)}".strip()
            results.append({
                "task": {"type": task, "name": name},
                "dataset": {"name": dataset or "unknown", "type": dataset or "unknown", "split": split},
                "metrics": [
                    {"type": r["metric"], "value": r["value"], "name": f"{split} {r['metric']}",
                     **({"args": {"signature": r["signature"]}} if r["signature"] else {})}
                    for r in rows if r["split"] == split
                ],
            })
        meta["model-index"] = [{"name": info.get("name") or "seq2seq-transformer", "results": results}]
    return meta


def usage(info: dict, languages: list[str]) -> str:
    """The card's code: CTranslate2's translator, or transformers' tokenizer and generate() with the
    folder's generation config (and the pipeline where transformers still has it, 4.x)."""
    name = info.get("name") or "."
    example = EXAMPLES.get(languages[0] if languages else "", "Your sentence here.")
    if info.get("format") == "transformers":
        lines = [
            "from transformers import AutoModelForSeq2SeqLM, AutoTokenizer",
            "",
            f'model_dir = "{name}"  # this folder, or its Hub repository',
            "tokenizer = AutoTokenizer.from_pretrained(model_dir)",
            "model = AutoModelForSeq2SeqLM.from_pretrained(model_dir)",
            f"batch = tokenizer([{example!r}], return_tensors=\"pt\", padding=True)",
            "output = model.generate(**batch)  # as generation_config.json says; num_beams=1 for greedy",
            "print(tokenizer.batch_decode(output, skip_special_tokens=True))",
            "# transformers 4.x: pipeline(\"translation\", model=model_dir)(lines, num_beams=...) (its default: 4 beams)",
        ]
    else:
        source, target = info["tokenizer"]["source"], info["tokenizer"]["target"]
        lines = [
            "import ctranslate2",
            "import sentencepiece as spm",
            "",
            f'model_dir = "{name}"  # this folder',
            'translator = ctranslate2.Translator(model_dir, device="cpu", intra_threads=2)',
            f'source_sp = spm.SentencePieceProcessor(model_file=f"{{model_dir}}/{source}")',
            "target_sp = source_sp" if source == target else
            f'target_sp = spm.SentencePieceProcessor(model_file=f"{{model_dir}}/{target}")',
            "",
            f"lines = [{example!r}]",
            "# Plain pieces: the model appends </s> to every source itself.",
            "batch = source_sp.encode(lines, out_type=str)",
            "results = translator.translate_batch(batch, beam_size=5, min_decoding_length=0, max_decoding_length=256)",
            "print([target_sp.decode(r.hypotheses[0]) for r in results])",
        ]
    return "\n".join(["```python", *lines, "```"])


def notes(info: dict) -> list[str]:
    """The card's decoding notes and file list for the export's format."""
    spm_files = list(dict.fromkeys([info["tokenizer"]["source"], info["tokenizer"]["target"]]))
    spm_list = ", ".join(f"`{name}`" for name in spm_files)
    if info.get("format") != "transformers":
        return [
            "CTranslate2's beam search ranks finished hypotheses by `score / length ** length_penalty`; the "
            "seq2seq decoder uses the GNMT penalty `((5 + n) / 6) ** alpha` and a length limit of "
            "`1.2 * source_tokens + 10` per sentence. To get exactly the outputs of the PyTorch model's greedy or "
            "beam search, use `seq2seq.inference.ct2_predictor.CT2Predictor(model_dir, decoding).translate(lines)` "
            "(`pip install seq2seq[export]`).",
            "## Files\n" + "\n".join([
                "- `model.bin`, `config.json`, `*_vocabulary.json`: the CTranslate2 model",
                f"- {spm_list}: the sentencepiece model" + ("" if len(spm_files) == 1 else "s (source, target)"),
                "- `seq2seq_export.json`: what was exported from where (checkpoint, model config, special tokens)",
            ]),
        ]
    mapping = info["length_penalty_mapping"]
    return [
        "`generation_config.json` holds the training run's decoding settings. The seq2seq beam search ranks "
        "finished hypotheses by the GNMT penalty `log_prob / ((5 + n) / 6) ** alpha`, transformers by "
        "`log_prob / n ** length_penalty`; `length_penalty = alpha * n / (n + 5)` matches it at outputs of n "
        f"tokens ({mapping['length_penalty']} for alpha {mapping['alpha']} at n = {mapping['typical_length']}; "
        "exact at 0), with `early_stopping=True` (a sentence is done at "
        "`num_beams` finished hypotheses, as in seq2seq). seq2seq limits each output to `1.2 * source_tokens + 10` "
        "tokens; transformers has one limit per batch (`max_new_tokens`).",
        "## Files\n" + "\n".join([
            f"- `config.json`, `model.safetensors`, `generation_config.json`: the {info.get('model_class')} model "
            "(dimensions in transformers' order: sines then cosines of the position table, see "
            "`seq2seq.inference.hf_export`)",
            f"- {spm_list}, `vocab.json`, `tokenizer_config.json`: the "
            "MarianTokenizer (the seq2seq sentencepiece model" + ("" if len(spm_files) == 1 else "s") + ")",
            "- `seq2seq_export.json`: what was exported from where (checkpoint, model config, decoding settings)",
        ]),
    ]


def model_card(info: dict, run: Path | None, license: str | None = None) -> str:
    """The card's text: YAML metadata, then the model, its scores, training and usage."""
    metrics, config, overrides = read_run(run)
    task = metrics.get("task") or config.get("task") or "translation"
    mc = info["model_config"]
    rows = scores(metrics, task)
    meta = metadata(info, config, task, rows, license)
    languages = meta.get("language", [])
    title = f"seq2seq Transformer {'→'.join(languages)}".strip() if languages else "seq2seq Transformer"
    weights = info.get("quantization") or "float32"
    transformers = info.get("format") == "transformers"
    parts = [
        "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---",
        f"# {title}",
        f"An encoder–decoder Transformer (Vaswani et al. 2017) trained with the seq2seq template ({task}), exported to "
        + (f"Hugging Face [transformers](https://github.com/huggingface/transformers) {info.get('transformers_version', '')}"
           f" as `{info.get('model_class')}`" if transformers else
           f"[CTranslate2](https://github.com/OpenNMT/CTranslate2) {info.get('ctranslate2_version', '')}")
        + f" with {weights} weights from `{Path(info['checkpoint']).name}`"
        + (f" (step {info['global_step']})" if info.get("global_step") is not None else "") + ".",
        "## Model",
        "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in [
            ("parameters", f"{info['num_parameters']:,}"),
            ("d_model / heads / d_ff", f"{mc['d_model']} / {mc['num_heads']} / {mc['d_ff']}"),
            ("layers (encoder + decoder)", f"{mc['num_encoder_layers']} + {mc['num_decoder_layers']}"),
            ("normalization", "pre-LN" if mc.get("pre_norm") else "post-LN (as in Vaswani et al. 2017)"),
            ("activation", mc.get("activation", "relu")),
            ("embeddings", ("shared source/target" if mc.get("share_embeddings") else "separate")
             + (", tied output projection" if mc.get("tie_output") else ", own output projection")),
            ("vocabulary (source / target)", f"{mc['src_vocab_size']} / {mc['tgt_vocab_size']} sentencepiece pieces"),
            ("positions", f"sinusoidal, at most {mc['max_positions']} tokens per side"),
            ("weights", weights),
        ]),
        "## Results",
    ]
    if rows:
        best = (metrics.get("checkpoints") or {}).get("best")
        same = best is not None and Path(best).name == Path(info["checkpoint"]).name
        which = "the checkpoint exported here" if same else f"not the exported `{Path(info['checkpoint']).name}`"
        parts.append(
            "Scores of the training run (its `metrics.json`), computed with the PyTorch model (greedy decoding "
            f"unless the run decoded otherwise): `test/*` of `checkpoints/{Path(best or 'best.ckpt').name}`, "
            f"chosen on validation ({which}), `val/*` at the last validation."
            + (f" Best validation {metrics.get('monitor', {}).get('metric', '')}: "
               f"{metrics[metrics['monitor']['metric'] + '_best']:.2f}."
               if isinstance(metrics.get("monitor"), dict) and metrics['monitor'].get('metric', '') + '_best' in metrics
               else "")
        )
        parts.append("| split | metric | value | signature |\n|---|---|---|---|\n" + "\n".join(
            # (a signature's | would end the table cell)
            f"| {r['split']} | {r['metric']} | {r['value']:.2f} | `{(r['signature'] or '').replace('|', BAR)}` |"
            for r in rows))
    else:
        parts.append("No scores: the checkpoint was not found in a run folder with a `metrics.json`.")
    parts.append("## Training")
    if overrides is not None:
        command = " ".join(["python -m seq2seq.train", *(shlex.quote(str(o)) for o in overrides)])
        parts.append(f"```bash\n{command}\n```")
    else:
        parts.append("The training command is unknown (no `.hydra/overrides.yaml` beside the checkpoint).")
    if config:
        parts.append("<details><summary>The run's configuration (<code>.hydra/config.yaml</code>)</summary>\n\n"
                     "```yaml\n" + yaml.safe_dump(config, sort_keys=False, allow_unicode=True) + "```\n</details>")
    if metrics.get("wall_time_s") is not None:
        parts.append(f"Training took {metrics['wall_time_s']:.0f} s on {metrics.get('device', 'an unknown device')}"
                     + (f" (commit {metrics['git_commit'][:10]})" if metrics.get("git_commit") else "") + ".")
    parts += ["## Usage", usage(info, languages), *notes(info)]
    return "\n\n".join(parts) + "\n"

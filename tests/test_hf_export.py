"""Export to Hugging Face transformers (seq2seq.inference.hf_export, seq2seq-export format=transformers):
the folder loads through AutoModelForSeq2SeqLM / AutoTokenizer / pipeline and computes what ours computes
(log-probabilities of random models of every exportable layout; greedy and beam outputs of trained post-LN
and pre-LN models), what no class represents is refused in one line, the command writes a model card."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf, open_dict

from helpers import SHORT_TRAINING_OVERRIDES, command_env, compose_train
from helpers.forked_commands import run_command
from helpers.hf import LAYOUTS, transformers_or_skip
from helpers.random_models import random_checkpoint, toy_tokenizers
from helpers.random_models import toy_pairs as toy_corpus
from seq2seq.decoding.search import DecodingConfig, max_output_lengths
from seq2seq.errors import ConfigError
from seq2seq.inference.checkpoint import load_model
from seq2seq.inference.predictor import Predictor
from seq2seq.models.transformer import TransformerConfig

pytestmark = pytest.mark.filterwarnings("ignore:Recommended. pip install sacremoses")


@pytest.fixture(scope="session")  # (session: skips before the session's training fixtures)
def hf():
    return transformers_or_skip()


def export(*args, **kwargs) -> Path:
    from seq2seq.inference.hf_export import export_transformers

    return export_transformers(*args, **kwargs)


def padded(rows: list[list[int]], pad: int = 0) -> torch.Tensor:
    src = torch.full((len(rows), max(map(len, rows))), pad, dtype=torch.long)
    for row, seq in enumerate(rows):
        src[row, : len(seq)] = torch.tensor(seq)
    return src


def teacher_forced_log_probs(net, model, src: torch.Tensor, tgt_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ours and transformers' log-probabilities (B, T, V) of every next token."""
    with torch.no_grad():
        ours = net(src, tgt_in).float().log_softmax(-1)
        theirs = model(input_ids=src, attention_mask=(src != 0).long(), decoder_input_ids=tgt_in).logits.log_softmax(-1)
    return ours, theirs


# ------------------------------------------------------------------------ random-weight models
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_exported_random_model_loads_through_the_auto_classes_and_computes_ours(layout, hf, tmp_path):
    """Every exportable layout, saved and read back by from_pretrained: the class that represents it,
    teacher-forced log-probabilities of every vocabulary entry within 1e-4 of ours, the tokenizer's ids
    and texts ours."""
    joint, model_settings, cls = LAYOUTS[layout]
    tokenizer = toy_tokenizers()[joint]
    ckpt = random_checkpoint(tmp_path / "random.ckpt", tokenizer, **model_settings)
    out = export(ckpt, tmp_path / "hf")
    model = hf.AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    hf_tokenizer = hf.AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == cls and type(hf_tokenizer).__name__ == "MarianTokenizer"
    net, _ = load_model(ckpt)

    pairs = toy_corpus()[:8]
    sources, targets = [en for en, _ in pairs], [de for _, de in pairs]
    batch = hf_tokenizer(sources, text_target=targets, padding=True, return_tensors="pt")
    assert [row[row != 0].tolist() for row in batch["input_ids"]] == tokenizer.encode_source(sources)
    assert [row[row != 0].tolist() for row in batch["labels"]] == [t + [3] for t in tokenizer.encode_target(targets)]
    tgt_in = padded([[2, *t] for t in tokenizer.encode_target(targets)])
    ours, theirs = teacher_forced_log_probs(net, model, batch["input_ids"], tgt_in)
    real = tgt_in != 0
    worst = float((ours - theirs).abs()[real].max())
    assert worst < 1e-4, f"{layout}: log-probabilities differ by up to {worst:.2e}"
    ids = tokenizer.encode_target(targets)
    assert hf_tokenizer.batch_decode(ids, skip_special_tokens=True) == tokenizer.decode_target(ids)


def test_what_no_class_represents_is_refused_in_one_line(hf, tmp_path, capsys):
    from seq2seq.export import export as export_command

    def run(ckpt: Path, **overrides) -> str:
        cfg = OmegaConf.create({"ckpt_path": str(ckpt), "output_dir": str(tmp_path / "out"), "format": "transformers",
                                "quantization": None, "force": False, "license": None, **overrides})
        with pytest.raises(SystemExit) as exit_info:
            export_command(cfg)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
        assert "Traceback" not in err
        return err

    tokenizers = toy_tokenizers()
    copy = random_checkpoint(tmp_path / "copy.ckpt", tokenizers["joint"], copy_attention=True)
    assert "copy attention" in run(copy)
    pre_ln_separate = random_checkpoint(tmp_path / "pre.ckpt", tokenizers["separate"], share_embeddings=False,
                                        pre_norm=True)
    assert "separate source and target vocabularies" in run(pre_ln_separate)
    plain = random_checkpoint(tmp_path / "plain.ckpt", tokenizers["joint"])
    assert "quantization" in run(plain, quantization="int8")
    assert not (tmp_path / "out").exists()


def test_a_setting_no_export_maps_is_refused_until_it_is_mapped():
    """Both exports take what they map from TransformerConfig.settings_outside: a field an export does
    not list (a model variant added later) must keep its default, and both say which and why."""
    from seq2seq.inference import ct2_export, hf_export

    cfg = TransformerConfig(copy_attention=True, pre_norm=True, activation="gelu")
    assert cfg.settings_outside({}) == [("activation", "gelu", ("relu",)), ("pre_norm", True, (False,)),
                                        ("copy_attention", True, (False,))]
    assert cfg.settings_outside({"activation": None, "pre_norm": (False, True)}) == [("copy_attention", True, (False,))]
    for mapped in (ct2_export.MAPPED, hf_export.MAPPED):  # every field but copy attention is mapped today
        assert [name for name, _, _ in cfg.settings_outside(mapped)] == ["copy_attention"]
    without_bias = {k: v for k, v in hf_export.MAPPED.items() if k != "output_bias"}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hf_export, "MAPPED", without_bias)
        with pytest.raises(ConfigError, match=r"output_bias=True \(the export maps False\)"):
            hf_export.check_exportable(TransformerConfig(output_bias=True))


def test_a_decoding_strategy_the_export_does_not_map_is_refused():
    """A strategy added later (decoding.STRATEGIES) is refused by the transformers export until
    generation_settings maps it, instead of being written as greedy decoding."""
    from seq2seq.inference.hf_export import generation_settings

    cfg = TransformerConfig()
    assert generation_settings(cfg, DecodingConfig(strategy="sampling", top_p=0.9))["do_sample"] is True
    assert "do_sample" not in generation_settings(cfg, DecodingConfig(strategy="greedy"))
    with pytest.raises(ConfigError, match="decoding.strategy=epsilon: the transformers export maps greedy"):
        generation_settings(cfg, DecodingConfig(strategy="epsilon"))


def test_missing_transformers_names_the_extra(monkeypatch):
    from seq2seq.inference.hf_export import require_transformers

    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'seq2seq\[transformers\]'"):
        require_transformers()


def test_length_penalty_mapping():
    """GNMT's alpha maps to the transformers exponent with the same slope in log n: exact at 0, alpha
    n / (n + 5) at the typical length."""
    from seq2seq.inference.hf_export import length_penalty

    assert length_penalty(0.0) == 0.0
    assert length_penalty(0.6, typical_length=20) == pytest.approx(0.48)
    assert length_penalty(1.0, typical_length=10) == pytest.approx(2 / 3, abs=1e-4)


# ------------------------------------------------------------------------------ trained models
@pytest.fixture(scope="module")
def pre_ln_checkpoint(tiny_run, tmp_path_factory) -> Path:
    """A pre-LN model trained like the session's tiny post-LN one, on the same corpus (3 epochs)."""
    from seq2seq.train import train

    tmp = tmp_path_factory.mktemp("pre_ln_run")
    cfg = compose_train(tmp, [*SHORT_TRAINING_OVERRIDES, "model.pre_norm=true", "trainer.max_epochs=3"])
    with open_dict(cfg):  # the post-LN run's corpus, tokenizer and token cache
        cfg.paths.data_dir = str(Path(tiny_run["data_dir"]).parent)
        cfg.paths.cache_dir = str(Path(tiny_run["run_dir"]).parent / "cache")
    train(cfg)
    return tmp / "run" / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module", params=["post-LN", "pre-LN"])
def trained(request, hf, tiny_run, tiny_checkpoint, tmp_path_factory) -> dict:
    """A trained model (the session's post-LN one, or a pre-LN one), exported, and the test split."""
    ckpt = tiny_checkpoint if request.param == "post-LN" else request.getfixturevalue("pre_ln_checkpoint")
    out = export(ckpt, tmp_path_factory.mktemp("hf") / request.param)
    net, tokenizer = load_model(ckpt)
    lines = (Path(tiny_run["data_dir"]) / "test.en").read_text().splitlines()
    model = hf.AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    return {"name": request.param, "dir": out, "net": net, "tokenizer": tokenizer, "lines": lines, "model": model,
            "src": padded(tokenizer.encode_source(lines))}


def our_limits(trained: dict) -> list[int]:
    """Our per-sentence output limits (tokens, EOS included: 1.2 * source length + 10) of the test lines."""
    return max_output_lengths(trained["src"], 0, 1.2, 10, trained["net"].config.max_positions).tolist()


def hf_generate(trained: dict, limit: int, cut: list[int] | None = None, **settings) -> list[tuple[list[int], float]]:
    """transformers' best output per test line (tokens without start and EOS; for greedy search also its
    log-probability sum), every line in one batch with ``limit`` new tokens at most (transformers has one
    limit per batch). ``cut``: greedy outputs cut at each line's own limit, which gives what a search with
    per-sentence limits gives (greedy outputs are prefixes of longer ones)."""
    src = trained["src"]
    greedy = settings.get("num_beams", 1) == 1
    with torch.no_grad():
        out = trained["model"].generate(input_ids=src, attention_mask=(src != 0).long(), max_new_tokens=limit,
                                        output_logits=greedy, return_dict_in_generate=True, **settings)
    logits = torch.stack(out.logits, dim=1).log_softmax(-1) if greedy else None
    results = []
    for row in range(len(src)):
        tokens = out.sequences[row, 1 : (cut[row] if cut else limit) + 1].tolist()
        steps = tokens.index(3) + 1 if 3 in tokens else len([t for t in tokens if t != 0])
        log_prob = float(logits[row, torch.arange(steps), out.sequences[row, 1 : steps + 1]].sum()) if greedy else 0.0
        results.append(([t for t in tokens[:steps] if t != 3], log_prob))
    return results


def test_trained_model_greedy_is_ours_token_for_token(trained):
    """Greedy through transformers' generate() gives our translate's tokens on every test line, with the
    same log-probabilities (within 1e-4); teacher-forced distributions agree within 1e-4 as well."""
    net, tokenizer, src = trained["net"], trained["tokenizer"], trained["src"]
    ours = Predictor(net, tokenizer, DecodingConfig(strategy="greedy")).generate(src)
    limits = our_limits(trained)
    theirs = hf_generate(trained, max(limits), cut=limits, num_beams=1)
    same = sum(h[0].tokens == tokens for h, (tokens, _) in zip(ours, theirs))
    worst_sum = max(abs(h[0].log_prob - lp) for h, (_, lp) in zip(ours, theirs))
    tgt_in = padded([[2, *h[0].tokens] for h in ours])
    ours_lp, theirs_lp = teacher_forced_log_probs(net, trained["model"], src, tgt_in)
    worst = float((ours_lp - theirs_lp).abs()[tgt_in != 0].max())
    print(f"\n{trained['name']}: greedy {same}/{len(ours)} token-identical, max |log-prob sum difference| "
          f"{worst_sum:.2e}, max |log-prob difference| over the vocabulary {worst:.2e}")
    assert same == len(ours)
    assert worst_sum < 1e-4 and worst < 1e-4


def test_trained_model_beam_4_agrees_with_ours(trained):
    """Beam 4 with early_stopping=True (a sentence is done at 4 finished hypotheses, as ours) and one length
    limit for every line on both sides (the longest of ours: transformers has one per batch): with alpha 0 and
    length_penalty 0 (the same ranking) the best output is ours on every test line; with alpha 0.6 and the
    export's length_penalty (0.48: the same slope in log n at 20 tokens) on at least 95 %."""
    from seq2seq.inference.hf_export import length_penalty

    net, tokenizer, src = trained["net"], trained["tokenizer"], trained["src"]
    limit = max(our_limits(trained))
    rates = {}
    for alpha in (0.0, 0.6):
        beam = DecodingConfig(strategy="beam", beam_size=4, alpha=alpha, max_len_a=0.0, max_len_b=limit)
        ours = Predictor(net, tokenizer, beam).generate(src)
        theirs = hf_generate(trained, limit, num_beams=4, early_stopping=True, length_penalty=length_penalty(alpha))
        rates[alpha] = sum(h[0].tokens == tokens for h, (tokens, _) in zip(ours, theirs)) / len(ours)
    print(f"\n{trained['name']} beam 4: " + ", ".join(
        f"alpha {alpha} / length_penalty {length_penalty(alpha)}: {rate:.1%} identical" for alpha, rate in rates.items()))
    assert rates[0.0] == 1.0 and rates[0.6] >= 0.95


def test_pipeline_returns_our_greedy_text(trained, hf):
    """What a transformers user gets for greedy decoding is our translate's text on every test line:
    ``pipeline("translation", model=folder)(lines, num_beams=1)`` under transformers 4; transformers 5
    removed that pipeline, so there what it did: the tokenizer, generate() with the folder's generation
    config and batch_decode(skip_special_tokens=True). transformers has one length limit per batch, so
    both get the same one: the longest of our per-sentence limits."""
    net, tokenizer, lines, src = trained["net"], trained["tokenizer"], trained["lines"], trained["src"]
    limit = max(our_limits(trained))
    greedy = DecodingConfig(strategy="greedy", max_len_a=0.0, max_len_b=limit)
    ours = tokenizer.decode_target([h[0].tokens for h in Predictor(net, tokenizer, greedy).generate(src)])
    if int(hf.__version__.split(".")[0]) < 5:
        translator = hf.pipeline("translation", model=str(trained["dir"]), device="cpu")
        theirs = [o["translation_text"] for o in translator(lines, batch_size=32, num_beams=1, max_new_tokens=limit)]
    else:
        hf_tokenizer = hf.AutoTokenizer.from_pretrained(trained["dir"])
        theirs = []
        for start in range(0, len(lines), 32):
            batch = hf_tokenizer(lines[start : start + 32], padding=True, return_tensors="pt")
            with torch.no_grad():
                output = trained["model"].generate(**batch, num_beams=1, max_new_tokens=limit)
            theirs += hf_tokenizer.batch_decode(output, skip_special_tokens=True)
    same = sum(a == b for a, b in zip(ours, theirs))
    print(f"\n{trained['name']}: transformers {hf.__version__} greedy text = ours on {same}/{len(ours)} lines")
    assert theirs == ours


def test_export_command_writes_a_loadable_folder_with_a_model_card(hf, tiny_run, tiny_checkpoint, tmp_path):
    """seq2seq-export format=transformers end to end: the folder's files, its card's Hub metadata and
    usage, and a second export into the same folder refused in one line."""
    out = tmp_path / "exported" / "toy-en-de"
    args = [f"ckpt_path={tiny_checkpoint}", f"output_dir={out}", "format=transformers", "license=mit"]
    result = run_command("seq2seq.export", args, cwd=tmp_path, env=command_env(tmp_path), text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == f"Exported to {out}"
    files = {p.name for p in out.iterdir()}
    expected = {"README.md", "config.json", "generation_config.json", "model.safetensors", "seq2seq_export.json",
                "source.spm", "target.spm", "tokenizer_config.json", "vocab.json"}
    assert expected <= files and files - expected <= {"special_tokens_map.json"}  # (written by transformers 4)
    card = (out / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["library_name"] == "transformers" and meta["license"] == "mit" and "marian" in meta["tags"]
    assert meta["pipeline_tag"] == "translation"
    results = {(r["dataset"]["split"], m["type"]): m for r in meta["model-index"][0]["results"] for m in r["metrics"]}
    assert results["test", "bleu"]["value"] == round(tiny_run["test/bleu"], 2)
    assert 'pipeline("translation"' in card and "AutoModelForSeq2SeqLM" in card and "ctranslate2" not in card.lower()
    info = json.loads((out / "seq2seq_export.json").read_text())
    assert info["model_class"] == "MarianMTModel" and info["format"] == "transformers"
    again = run_command("seq2seq.export", args, cwd=tmp_path, env=command_env(tmp_path), text=True)
    assert again.returncode == 2 and "exists and is not empty" in again.stderr and "Traceback" not in again.stderr
    assert type(hf.AutoTokenizer.from_pretrained(out)).__name__ == "MarianTokenizer"


def test_model_card_snippet_translates(hf, tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """The card's usage code, as written, translates (run from the folder above the model), with the
    exported beam settings."""
    out = export(tiny_checkpoint, tmp_path / "toy-en-de")
    card = (out / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    printed = eval(capsys.readouterr().out)
    assert len(printed) == 1 and printed[0].strip()
    settings = json.loads((out / "generation_config.json").read_text())
    assert (settings["num_beams"], settings["early_stopping"], settings["length_penalty"]) == (5, True, 0.8)  # alpha 1.0 at 20 tokens

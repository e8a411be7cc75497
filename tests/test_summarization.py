"""Summarization: ROUGE against the reference implementation, Lead-3, truncation, a fast_dev_run."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

from helpers import compose_train
from seq2seq.baselines import run_baseline
from seq2seq.errors import ConfigError
from seq2seq.metrics.text_metrics import ROUGE_KEYS, rouge_scores, split_sentences
from seq2seq.models.lead import lead, lead_n, looks_like_dialogue, split_turns

# -------------------------------------------------------------------------------- fixtures

NAMES = ["Amanda", "Jerry", "Tom", "Olivia", "Mark", "Lucy"]
PHRASES = [
    "I baked cookies", "do you want some", "sure thing", "see you tomorrow at the station",
    "the train is late again", "can you buy milk", "we are running out of coffee",
    "let's meet at noon", "I finished the report", "the meeting moved to Friday",
    "my cat is sick", "she went to the vet", "thanks a lot", "no problem",
]


def make_dialogue(rng: random.Random, turns: int) -> tuple[str, str]:
    speakers = rng.sample(NAMES, 2)
    lines = [f"{speakers[i % 2]}: {rng.choice(PHRASES).capitalize()}{rng.choice('.!?')}" for i in range(turns)]
    summary = f"{speakers[0]} and {speakers[1]} talk. {speakers[0]} says {rng.choice(PHRASES)}."
    return " ".join(lines), summary


def write_corpus(root: Path, sizes=(("train", 48), ("val", 6)), long_every: int = 0, seed: int = 0) -> dict:
    """SAMSum-like {split}.src/.tgt lines; every ``long_every``-th dialogue has 60 turns."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    corpus = {}
    for split, size in sizes:
        pairs = [make_dialogue(rng, 60 if long_every and i % long_every == 0 else 2) for i in range(size)]
        corpus[split] = pairs
        (root / f"{split}.src").write_text("".join(f"{s}\n" for s, _ in pairs))
        (root / f"{split}.tgt").write_text("".join(f"{t}\n" for _, t in pairs))
    return corpus


# -------------------------------------------------------------------------------- ROUGE

HYPS = [
    "Amanda baked cookies. She will bring Jerry some tomorrow.",
    "The cats are running in the garden!",
    "Mr. Smith arrived on Jan. 5. He stayed.",
    "",
    "Totally unrelated words here",
    "Tom's meeting moved to Friday; he is annoyed... Olivia isn't.",
]
REFS = [
    "Amanda baked cookies and will bring Jerry some tomorrow.",
    "A cat runs in the gardens. Another cat sleeps.",
    "Mr. Smith arrived on Jan. 5 and stayed for two days.",
    "Nobody said anything.",
    "The weather was nice.",
    "Olivia says Tom's meeting was moved to Friday. Tom is annoyed.",
]


def reference_rouge(hyps: list[str], refs: list[str]) -> dict[str, float]:
    """Mean F-measures (0-100) of Google's rouge-score on the same sentence-split summaries."""
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_KEYS, 0.0)
    for hyp, ref in zip(hyps, refs):
        scores = scorer.score("\n".join(split_sentences(ref)), "\n".join(split_sentences(hyp)))
        for key in ROUGE_KEYS:
            totals[key] += scores[key].fmeasure
    return {key: 100.0 * value / len(hyps) for key, value in totals.items()}


def assert_close(ours: dict, reference: dict, tol: float = 0.1) -> None:
    for key in ROUGE_KEYS:
        assert abs(ours[key] - reference[key]) <= tol, (key, ours[key], reference[key])


def test_split_sentences():
    assert split_sentences("Mr. Smith went home. He slept!") == ["Mr. Smith went home.", "He slept!"]
    assert split_sentences("Hi... what?! ok") == ["Hi...", "what?!", "ok"]
    assert split_sentences('He said "stop." Then U.S. troops left') == ['He said "stop."', "Then U.S. troops left"]
    assert split_sentences("J. Doe came.\nsecond line") == ["J. Doe came.", "second line"]
    assert split_sentences("  ") == []


def test_rouge_matches_rouge_score_on_fixture():
    ours = rouge_scores(HYPS, REFS)
    assert_close(ours, reference_rouge(HYPS, REFS))
    assert ours["rouge_signature"].startswith("torchmetrics.ROUGEScore")
    # Identical summaries score 100, disjoint ones 0, on every variant.
    assert all(v == pytest.approx(100.0) for k, v in rouge_scores(REFS, REFS).items() if k in ROUGE_KEYS)
    assert all(v == 0.0 for k, v in rouge_scores(["zebra quartz"], ["cats sleep"]).items() if k in ROUGE_KEYS)
    with pytest.raises(ValueError):
        rouge_scores(["a"], [])


def test_rouge_matches_rouge_score_on_samsum(shared_data):
    root = shared_data / "samsum"
    sources = (root / "val.src").read_text(encoding="utf-8").split("\n")[:818]
    references = (root / "val.tgt").read_text(encoding="utf-8").split("\n")[:818]
    hypotheses, unit = lead_n(sources, 3)
    assert unit == "turns"
    ours = rouge_scores(hypotheses, references)
    assert_close(ours, reference_rouge(hypotheses, references))
    # Lead-3 (first three turns) on SAMSum val, as the README reports it with this ROUGE.
    pinned = {"rouge1": 32.53, "rouge2": 10.06, "rougeL": 25.35, "rougeLsum": 30.08}
    assert {key: ours[key] for key in pinned} == pytest.approx(pinned, abs=0.05)


# -------------------------------------------------------------------------------- Lead-3

DIALOGUE = "Amanda: I baked cookies. Do you want some? Jerry: Sure! Amanda: I'll bring you some :-) Jerry: Thanks Wow :) Amanda: np"
DOCUMENT = "First one. Then Mr. Smith came. Third! Fourth? Fifth."


def test_split_turns():
    assert split_turns(DIALOGUE) == [
        "Amanda: I baked cookies. Do you want some?", "Jerry: Sure!", "Amanda: I'll bring you some :-)",
        "Jerry: Thanks Wow :)", "Amanda: np",
    ]
    # A first speaker of several words stays whole; "Name :" with a space; a lowercase first speaker.
    assert split_turns("Uncle Billy: hi all Ann: hello Uncle Billy: bye") == [
        "Uncle Billy: hi all", "Ann: hello", "Uncle Billy: bye"]
    assert split_turns("Chris : It's raining. Mike : I know.") == ["Chris : It's raining.", "Mike : I know."]
    assert split_turns("zak: yo Tom: hey zak: ok") == ["zak: yo", "Tom: hey", "zak: ok"]
    assert split_turns("no speakers here") == ["no speakers here"]


def test_lead3_known_answer():
    assert lead(DIALOGUE, 3, "turns") == "Amanda: I baked cookies. Do you want some? Jerry: Sure! Amanda: I'll bring you some :-)"
    assert lead(DOCUMENT, 3, "sentences") == "First one. Then Mr. Smith came. Third!"
    assert looks_like_dialogue([DIALOGUE, DIALOGUE]) and not looks_like_dialogue([DOCUMENT])
    assert lead_n([DOCUMENT], 2) == (["First one. Then Mr. Smith came."], "sentences")
    with pytest.raises(ConfigError):
        lead_n([DOCUMENT], 3, unit="paragraphs")


def test_lead3_command_writes_metrics(tmp_path, monkeypatch):
    root = tmp_path / "corpus"
    root.mkdir()
    # One reference equal to the Lead-3 output, one sharing no word with it: every ROUGE is 50.
    sources = [DIALOGUE, "Tom: hello there Lucy: hi Tom: bye"]
    references = [lead(DIALOGUE, 3, "turns"), "Zebras juggle quartz."]
    for split in ("train", "val"):
        (root / f"{split}.src").write_text("".join(f"{s}\n" for s in sources))
        (root / f"{split}.tgt").write_text("".join(f"{r}\n" for r in references))
    cfg = compose_train(tmp_path, ["data=samsum", f"data.root={root}", "split=val"], config_name="baselines")
    payload = run_baseline(cfg)
    for key in ROUGE_KEYS:
        assert payload[f"val/{key}"] == pytest.approx(50.0)
    assert payload["unit"] == "turns" and payload["num_summaries"] == 2
    run = tmp_path / "run"
    assert json.loads((run / "metrics.json").read_text())["val/rouge1"] == pytest.approx(50.0)
    assert (run / "hypotheses.val.txt").read_text().splitlines() == [references[0], "Tom: hello there Lucy: hi Tom: bye"]

    # `python -m seq2seq.baselines lead3 ...`: the bare name becomes baseline=lead3.
    import seq2seq.baselines as baselines

    seen = []
    monkeypatch.setattr(baselines, "_hydra_main", lambda: seen.append(list(sys.argv)))
    monkeypatch.setattr(sys, "argv", ["baselines", "lead3", "data=samsum"])
    baselines.main()
    assert seen == [["baselines", "baseline=lead3", "data=samsum"]]


# -------------------------------------------------------------------------------- training path


def test_truncation_is_counted(tmp_path):
    from seq2seq.data.datamodule import Seq2SeqDataModule

    write_corpus(tmp_path / "corpus", sizes=(("train", 40), ("val", 10)), long_every=5)
    dm = Seq2SeqDataModule.from_config(
        root=str(tmp_path / "corpus"), vocab_size=150, spm_model_type="bpe", max_src_len=64, max_tgt_len=40,
        overlong="truncate", cache_dir=str(tmp_path / "cache"), max_tokens=2048,
    )
    dm.prepare_data()
    dm.setup("fit")
    # Every 5th dialogue has 60 turns (hundreds of subwords), the others 2 (< 64).
    counts = dm.truncation_counts()
    assert counts["truncated"] == 8 and counts["kept"] == counts["total"] == 40
    assert counts["val_truncated"] == 2
    assert max(len(dm.datasets["train"][i][1]) for i in range(40)) == 65  # 64 + EOS
    # Targets have their own limit: every summary cut to 5 subwords, no source touched.
    dm5 = Seq2SeqDataModule.from_config(
        root=str(tmp_path / "corpus"), vocab_size=150, spm_model_type="bpe", max_src_len=4096, max_tgt_len=5,
        overlong="truncate", cache_dir=str(tmp_path / "cache"), max_tokens=8192,
    )
    dm5.setup("fit")
    assert dm5.filter_counts["truncated"] == 40 and max(dm5.datasets["train"].data.tgt_lengths) == 5
    assert (dm5.datasets["train"].data.src_lengths == dm.datasets["train"].data.src_lengths.clip(max=65)).sum() == 32


def test_summarization_fast_dev_run(tmp_path, monkeypatch):
    from seq2seq.train import train

    root = tmp_path / "corpus"
    write_corpus(root, long_every=8)
    cfg = compose_train(tmp_path, [
        "experiment=samsum", f"data.root={root}", "data.vocab_size=150", "data.max_src_len=64",
        "data.max_tgt_len=40", "model.d_model=32", "model.num_heads=2", "model.num_encoder_layers=1",
        "model.num_decoder_layers=1", "model.d_ff=64", "trainer.precision=32-true", "logger=csv",
        "callbacks.progress_bar=null", "trainer.enable_model_summary=false", "decoding.max_len_b=8",
        "decoding.min_len=2", "debug=fast_dev_run",
    ])
    assert cfg.task == "summarization" and cfg.callbacks.model_checkpoint.monitor == "val/rougeLsum"
    import seq2seq.metrics.text_metrics as text_metrics

    scored = []

    def recording_rouge(hypotheses, references):
        scored.append((list(hypotheses), list(references)))
        return rouge_scores(hypotheses, references)

    monkeypatch.setattr(text_metrics, "rouge_scores", recording_rouge)  # what validation's score() calls
    metrics = train(cfg)
    # Validation scored the model's summaries of the whole val split against its references, and
    # logged what Google's rouge-score gives for them (not merely some number in 0-100).
    (hypotheses, references), = scored
    assert references == (root / "val.tgt").read_text().splitlines() and len(hypotheses) == len(references)
    assert any(hypotheses)
    reference = reference_rouge(hypotheses, references)
    for key in ROUGE_KEYS:
        assert metrics[f"val/{key}"] == pytest.approx(reference[key], abs=0.1), key
    assert "val/rougeLsum_best" in metrics and "val/bleu" not in metrics and "val/bleu_best" not in metrics
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["task"] == "summarization" and written["rouge_signature"].startswith("torchmetrics")
    assert written["data_filter"]["truncated"] == 6 and written["data_filter"]["total"] == 48


def test_module_task_and_monitor():
    from seq2seq.models.lit_module import Seq2SeqModule

    with pytest.raises(ConfigError):
        Seq2SeqModule(model={}, optim={"lr": 1e-3}, task="parsing")
    assert Seq2SeqModule(model={}, optim={"lr": 1e-3}).monitor == "val/bleu"
    module = Seq2SeqModule(model={}, optim={"lr": 1e-3}, task="summarization")
    assert module.monitor == "val/rougeLsum" and module.hparams.task == "summarization"


def test_eval_scores_a_summarization_checkpoint_with_rouge(tmp_path, monkeypatch):
    """seq2seq.eval reads the task from the run and reproduces training's val ROUGE (greedy)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    from seq2seq.config import config_dir
    from seq2seq.eval import evaluate
    from seq2seq.train import train

    root = tmp_path / "corpus"
    write_corpus(root)
    cfg = compose_train(tmp_path, [
        "experiment=samsum", f"data.root={root}", "data.vocab_size=150", "data.max_src_len=64",
        "data.max_tgt_len=40", "model.d_model=32", "model.num_heads=2", "model.num_encoder_layers=1",
        "model.num_decoder_layers=1", "model.d_ff=64", "trainer.precision=32-true", "logger=csv",
        "callbacks.progress_bar=null", "trainer.enable_model_summary=false", "decoding.max_len_b=8",
        "decoding.min_len=2", "trainer.max_steps=6", "trainer.val_check_interval=1.0", "optim.lr=5e-3",
    ])
    metrics = train(cfg)
    run = tmp_path / "run"
    (run / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")  # as the command line writes it

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        eval_cfg = compose("eval", overrides=[
            f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "split=val", "decoding=summarization",
            "decoding.strategy=greedy", "decoding.max_len_b=8", "decoding.min_len=2", "device=cpu",
        ], return_hydra_config=True)
    with open_dict(eval_cfg):
        eval_cfg.paths.output_dir = str(tmp_path / "eval")
        eval_cfg.hydra.runtime.output_dir = str(tmp_path / "eval")
    HydraConfig.instance().set_config(eval_cfg)
    result = evaluate(eval_cfg)
    assert result["task"] == "summarization" and "val/bleu" not in result
    for key in ROUGE_KEYS:
        assert result[f"val/{key}"] == pytest.approx(metrics[f"val/{key}"], abs=1e-6)
    assert result["rouge_signature"].startswith("torchmetrics")  # the key training writes too

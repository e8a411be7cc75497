"""Several language pairs in one model (seq2seq.data.multilingual): the temperature sampler's
proportions, a real multilingual training on a slice of Multi30k en->{de,fr,cs} with per-pair
validation scores, and the target language through the API, ``translate`` and ``eval``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import assert_one_line_error, command_env, compose_train, shared_corpus
from helpers.forked_commands import run_command
from seq2seq.data.multilingual import TemperatureBatchSampler, pair_probabilities
from seq2seq.data.sampler import TokenBudgetBatchSampler
from seq2seq.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

PAIRS = ("en-de", "en-fr", "en-cs")


# -- sampling across pairs -----------------------------------------------------------------------

def _samplers(sizes, seed=0, **kwargs):
    rng = np.random.default_rng(seed)
    out = []
    for k, n in enumerate(sizes):
        # Pairs with different length profiles: sentences per batch differ from pair to pair.
        src = rng.integers(3, 12 + 8 * k, size=n)
        tgt = src + rng.integers(0, 4, size=n)
        out.append(TokenBudgetBatchSampler(src, tgt, 256, shuffle=True, seed=seed + k, **kwargs))
    return out


def _pair_of(offsets, index):
    return int(np.searchsorted(offsets, index, side="right")) - 1


def test_pair_probabilities_follow_the_temperature_formula():
    sizes = [4000, 1000, 100]
    for t in (1, 2, 5):
        w = np.array(sizes, dtype=float) ** (1 / t)
        assert pair_probabilities(sizes, t) == pytest.approx(w / w.sum())
    assert pair_probabilities(sizes, 1) == pytest.approx(np.array(sizes) / sum(sizes))
    assert pair_probabilities(sizes, float("inf")) == pytest.approx([1 / 3] * 3)
    assert pair_probabilities(sizes, 1000) == pytest.approx([1 / 3] * 3, abs=0.01)
    for bad in (0, -1, "hot"):
        with pytest.raises(ConfigError, match="temperature"):
            pair_probabilities(sizes, bad)


@pytest.mark.parametrize("temperature", [1, 5, 100])
def test_sampled_sentences_per_pair_match_the_temperature(temperature):
    sizes = [4000, 1000, 100]
    sampler = TemperatureBatchSampler(_samplers(sizes), sizes, temperature, seed=3)
    offsets = np.cumsum([0, *sizes])
    counts = np.zeros(3)
    epochs = 8
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == sum(len(s) for s in sampler.samplers)
        for batch in batches:
            pairs = {_pair_of(offsets, i) for i in batch}
            assert len(pairs) == 1  # one pair per batch
            counts[pairs.pop()] += len(batch)
    share = counts / counts.sum()
    expected = pair_probabilities(sizes, temperature)
    assert share == pytest.approx(expected, abs=0.01), (share, expected)
    if temperature == 1:  # proportional: each pair's batches exactly once per epoch, as concatenated
        assert sampler.counts.tolist() == [len(s) for s in sampler.samplers]


def test_upsampled_pair_goes_through_all_its_data_and_resumes_exactly():
    sizes = [3000, 200]
    make = lambda: TemperatureBatchSampler(_samplers(sizes, seed=1), sizes, 100, seed=7)  # noqa: E731
    sampler = make()
    sampler.set_epoch(2)
    full = list(sampler)
    seen_small = {i for b in full for i in b if i >= sizes[0]}
    assert len(seen_small) == sizes[1]  # upsampled ~7x: every sentence of the small pair comes back
    # Resume after 11 batches of epoch 2 in a fresh sampler: the rest of the epoch, batch for batch.
    resumed = make()
    resumed.load_state_dict({**sampler.state_dict(batches_consumed=11)})
    resumed.set_epoch(2)
    assert list(resumed) == full[11:]
    # debug=overfit turns shuffling off: the same batches in every epoch.
    sampler.shuffle = False
    sampler.set_epoch(0)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) == first
    other = TemperatureBatchSampler(_samplers(sizes, seed=1), sizes, 5, seed=7)
    with pytest.raises(Exception, match="temperature"):
        other.load_state_dict(sampler.state_dict())


# -- a real multilingual run on a slice of Multi30k --------------------------------------------

TRAIN_LINES, VAL_LINES = 1500, 24


@pytest.fixture(scope="module")
def multi30k_slice(tmp_path_factory) -> Path:
    """The first lines of the real Multi30k train/val files (en, de, fr, cs), so a run takes seconds."""
    source = shared_corpus("multi30k")
    root = tmp_path_factory.mktemp("multi30k_slice")
    for split, n in (("train", TRAIN_LINES), ("val", VAL_LINES)):
        for lang in ("en", "de", "fr", "cs"):
            lines = (source / f"{split}.{lang}").read_text(encoding="utf-8").splitlines()[:n]
            (root / f"{split}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def _overrides(root: Path) -> list[str]:
    return [
        "experiment=multi30k_multilingual", f"data.root={root}", "data.vocab_size=600",
        "model.d_model=32", "model.num_heads=2", "model.d_ff=64", "model.num_encoder_layers=1",
        "model.num_decoder_layers=1", "optim.warmup_steps=10", "trainer.precision=32-true",
        "++trainer.max_steps=16", "++trainer.limit_train_batches=16", "trainer.val_check_interval=1.0",
        "trainer.max_epochs=1", "trainer.max_time=null", "decoding.max_len_b=5",
        "logger=csv", "callbacks.progress_bar=null", "trainer.enable_model_summary=false",
    ]


@pytest.fixture(scope="module")
def multi_run(multi30k_slice, tmp_path_factory) -> dict:
    from seq2seq.train import train

    tmp = tmp_path_factory.mktemp("multi_run")
    train(compose_train(tmp, _overrides(multi30k_slice)))
    run = tmp / "run"
    return {"run": run, "root": multi30k_slice, "tmp": tmp, "ckpt": run / "checkpoints" / "best.ckpt",
            "metrics": json.loads((run / "metrics.json").read_text())}


def test_multilingual_run_logs_bleu_per_pair_and_their_mean(multi_run):
    metrics = multi_run["metrics"]
    for metric in ("bleu", "chrf"):
        per_pair = [metrics[f"val/{metric}/{pair}"] for pair in PAIRS]
        assert metrics[f"val/{metric}"] == pytest.approx(np.mean(per_pair), rel=1e-5, abs=1e-6)
    assert all(f"val/loss/{pair}" in metrics for pair in PAIRS)
    assert metrics["monitor"]["metric"] == "val/bleu" and "val/bleu_best" in metrics
    assert metrics["signatures"]["val"]["bleu/en-fr"].startswith("nrefs:1|case:mixed")
    header = (multi_run["run"] / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val/bleu", *(f"val/bleu/{p}" for p in PAIRS), *(f"val/chrf/{p}" for p in PAIRS)} <= set(header)
    # The checkpoint knows its languages (the tokenizer's state), and the tags are single pieces.
    ckpt = torch.load(multi_run["ckpt"], map_location="cpu", weights_only=True)
    assert json.loads(ckpt["tokenizer"]["target_tags"]) == {"de": "<2de>", "fr": "<2fr>", "cs": "<2cs>"}


def test_training_batches_hold_one_pair_each_and_sources_start_with_its_tag(multi_run):
    from hydra.utils import instantiate

    from seq2seq.data.tokenizer import EOS_ID

    # A pair's own option (a smaller en-cs) overrides the shared one.
    cfg = compose_train(multi_run["tmp"], [*_overrides(multi_run["root"]), "data.pairs.en-cs.max_train_pairs=300"])
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.train_sizes == [TRAIN_LINES, TRAIN_LINES, 300]
    tags = {lang: dm.tokenizer.src.piece_to_id(f"<2{lang}>") for lang in ("de", "fr", "cs")}
    assert sorted(tags.values()) == [4, 5, 6]  # user-defined symbols, right after the specials
    loader = dm.train_dataloader()
    assert len(loader) == sum(dm.train_sampler.counts)
    assert dm.train_sampler.probabilities == pytest.approx(pair_probabilities([TRAIN_LINES, TRAIN_LINES, 300], 5))
    firsts = [set(batch["src"][:, 0].tolist()) for _, batch in zip(range(12), loader)]
    assert all(len(f) == 1 and f <= set(tags.values()) for f in firsts)  # one pair, its tag first
    assert len({f.pop() for f in firsts}) == 3  # the pairs alternate
    sources = dm.corpora["en-fr"].datasets["val"].data
    assert sources.src(0)[0] == tags["fr"] and sources.src(0)[-1] == EOS_ID
    # The loader's saved position (what a checkpoint keeps) resumes the epoch batch for batch.
    loader = dm.train_dataloader()
    batches = [b["index"].tolist() for b in loader]
    state = loader.state_dict()
    state["batch_sampler"]["position"] = 7
    again = dm.train_dataloader()
    again.load_state_dict(state)
    assert [b["index"].tolist() for b in again] == batches[7:]
    # Validation takes the pairs in turn: trainer.limit_val_batches=3 still sees every pair.
    first = [dm.pair_of_index("val", b["index"][0].item()) for _, b in zip(range(3), dm.val_dataloader())]
    assert first == list(PAIRS)


def test_translator_puts_the_tag_of_tgt_lang_first(multi_run):
    from seq2seq.api import Translator
    from seq2seq.decoding.search import DecodingConfig, generate
    from seq2seq.inference.checkpoint import load_model

    translator = Translator.from_checkpoint(multi_run["ckpt"], device="cpu")
    assert translator.target_languages == ["de", "fr", "cs"]
    net, tokenizer = load_model(multi_run["ckpt"])
    sentence = "A man rides a bike."
    plain = tokenizer.encode_source([sentence])[0]
    for lang in ("de", "fr", "cs"):
        ids = translator.source_tokenizer(lang).encode_source([sentence])[0]
        assert ids == [tokenizer.src.piece_to_id(f"<2{lang}>"), *plain]
        # What translate gives is the search on exactly those ids.
        [[best]] = generate(net, torch.tensor([ids]), DecodingConfig())
        assert translator.translate(sentence, tgt_lang=lang) == tokenizer.decode_target([best.tokens])[0]
    default_fr = Translator.from_checkpoint(multi_run["ckpt"], device="cpu", tgt_lang="fr")
    assert default_fr.translate([sentence]) == translator.translate([sentence], tgt_lang="fr")
    with pytest.raises(ConfigError, match=r"^tgt_lang=es is not a target language of this model: use one of de, fr, cs$"):
        translator.translate(sentence, tgt_lang="es")
    with pytest.raises(ConfigError, match="multilingual.*choose one with tgt_lang"):
        translator.translate(sentence)
    with pytest.raises(ConfigError, match="tgt_lang=xx"):
        Translator.from_checkpoint(multi_run["ckpt"], device="cpu", tgt_lang="xx")


@pytest.fixture(scope="module")
def one_pair_checkpoint(multi_run) -> Path:
    """The multilingual checkpoint without its language list: a checkpoint of one language pair."""
    ckpt = torch.load(multi_run["ckpt"], map_location="cpu", weights_only=True)
    del ckpt["tokenizer"]["target_tags"]
    path = multi_run["tmp"] / "one_pair.ckpt"
    torch.save(ckpt, path)
    return path


def test_ensembles_tell_a_multilingual_tokenizer_from_a_one_pair_one(multi_run, one_pair_checkpoint):
    from seq2seq.inference.checkpoint import load_models

    with pytest.raises(ConfigError, match="target languages de, fr, cs vs no target-language tags"):
        load_models([multi_run["ckpt"], one_pair_checkpoint])


def test_translate_command_takes_tgt_lang_and_refuses_wrong_ones(multi_run, one_pair_checkpoint):
    def run(*args):
        return run_command("seq2seq.translate", [*args, "interactive=false", "progress=false", "decoding=greedy"],
                           cwd=multi_run["tmp"], input="A man rides a bike.\nTwo dogs play.\n", text=True,
                           env=command_env(multi_run["tmp"], threads=1), timeout=120)

    from seq2seq.api import Translator

    ok = run(f"ckpt_path={multi_run['ckpt']}", "tgt_lang=cs")
    assert ok.returncode == 0, ok.stderr
    expected = Translator.from_checkpoint(multi_run["ckpt"], device="cpu").translate(
        ["A man rides a bike.", "Two dogs play."], tgt_lang="cs")
    assert ok.stdout.splitlines() == expected
    assert_one_line_error(run(f"ckpt_path={multi_run['ckpt']}", "tgt_lang=es"), "tgt_lang=es", "de, fr, cs")
    assert_one_line_error(run(f"ckpt_path={multi_run['ckpt']}"), "multilingual", "tgt_lang")
    assert_one_line_error(run(f"ckpt_path={one_pair_checkpoint}", "tgt_lang=de"), "tgt_lang=de", "one language pair")


def test_eval_scores_each_pair_as_validation_did(multi_run, one_pair_checkpoint, tmp_path):
    from seq2seq.eval import evaluate

    data = ["data=multi30k_multilingual", f"data.root={multi_run['root']}", "data.vocab_size=600", "split=val",
            "decoding.max_len_b=5"]
    payload = evaluate(compose_train(tmp_path / "all", [f"ckpt_path={multi_run['ckpt']}", *data], config_name="eval"))
    trained = multi_run["metrics"]
    for key in ("val/bleu", "val/chrf", *(f"val/{m}/{p}" for m in ("bleu", "chrf") for p in PAIRS)):
        assert payload[key] == pytest.approx(trained[key], rel=1e-5, abs=1e-5), key
    for pair in PAIRS:  # teacher-forced loss per pair, on the same tagged sources
        assert payload[f"val/loss/{pair}"] == pytest.approx(trained[f"val/loss/{pair}"], rel=1e-4)
    assert trained["val/chrf/en-cs"] > 0 and trained["val/chrf/en-fr"] > 0  # so that the equalities above say something
    assert payload["pairs"] == list(PAIRS)
    assert all((tmp_path / "all" / "run" / f"hypotheses.val.{p}.txt").is_file() for p in PAIRS)
    one = evaluate(compose_train(tmp_path / "fr", [f"ckpt_path={multi_run['ckpt']}", *data, "tgt_lang=fr"],
                                 config_name="eval"))
    assert one["pairs"] == ["en-fr"] and one["val/bleu/en-fr"] == pytest.approx(trained["val/bleu/en-fr"], abs=1e-5)
    with pytest.raises(ConfigError, match="checkpoint translates one language pair"):
        evaluate(compose_train(tmp_path / "mono", [f"ckpt_path={one_pair_checkpoint}", *data], config_name="eval"))


def test_fine_tuning_a_multilingual_model_needs_a_multilingual_data_config(multi_run, tmp_path):
    from seq2seq.train import train

    model = [o for o in _overrides(multi_run["root"]) if o.startswith("model.")]
    one_pair = ["experiment=multi30k_en_de", f"data.root={multi_run['root']}", *model, f"init_from={multi_run['ckpt']}"]
    with pytest.raises(ConfigError, match="is a multilingual model .*multilingual data config"):
        train(compose_train(tmp_path / "one", one_pair))
    # With a multilingual config (here en-fr alone) it fine-tunes with the parent's tokenizer and tags.
    child = [*_overrides(multi_run["root"]), "~data.pairs.en-de", "~data.pairs.en-cs", f"init_from={multi_run['ckpt']}",
             "++trainer.max_steps=4", "++trainer.limit_train_batches=4"]
    metrics = train(compose_train(tmp_path / "two", child))
    assert "val/bleu/en-fr" in metrics and "val/bleu/en-de" not in metrics
    parent, ckpt = (torch.load(c, map_location="cpu", weights_only=True)
                    for c in (multi_run["ckpt"], tmp_path / "two" / "run" / "checkpoints" / "last.ckpt"))
    assert ckpt["tokenizer"] == parent["tokenizer"]  # the three languages stay


def test_the_fast_flat_encoding_puts_the_tag_first_as_encode_source_does():
    """Training splits are tokenized by encode_flat (in worker processes); a view's tag must be there too."""
    from seq2seq.data.tokenizer import Tokenizer

    texts = ["a man rides a bike .", "ein Mann", "le chat noir", ""] * 40
    tokenizer = Tokenizer.train(texts, texts, 60, True, "bpe", {"de": "<2de>", "fr": "<2fr>"})
    for view in (tokenizer.for_target("fr"), tokenizer.for_target("de"), tokenizer):
        flat, lengths, _ = view.encode_flat(texts[:4], "source")
        assert [row.tolist() for row in np.split(flat, np.cumsum(lengths)[:-1])] == view.encode_source(texts[:4])
    assert view.encode_source(texts[:1])[0][0] != tokenizer.for_target("fr").encode_source(texts[:1])[0][0]

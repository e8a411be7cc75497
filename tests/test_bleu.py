"""sacreBLEU by the book: the tokenizer follows the target language, several references per segment,
the signature says both; extra reference files of a data config."""

import sys

import pytest
from sacrebleu.metrics import BLEU

from seq2seq.data.datamodule import Seq2SeqDataModule
from seq2seq.errors import ConfigError, DataError
from seq2seq.metrics.text_metrics import bleu_tokenizer, rouge_scores, score

# Papineni et al. (2002), section 2.1: candidate 1 and three of its references.
CANDIDATE = "It is a guide to action which ensures that the military always obeys the commands of the party."
REF1 = "It is a guide to action that ensures that the military will forever heed Party commands."
REF3 = "It is the practical guide for the army always to heed the directions of the party."

ZH_HYP, ZH_REF = "我喜欢吃苹果。", "我很喜欢吃苹果。"  # "I like eating apples." / "I like eating apples very much."


@pytest.mark.parametrize("lang, expected", [
    ("zh", "zh"), ("zh-CN", "zh"), ("zho_Hans", "zh"), ("ja", "ja-mecab"), ("jpn_Jpan", "ja-mecab"),
    ("ko", "ko-mecab"), ("de", "13a"), ("en", "13a"), ("tgt", "13a"), (None, "13a"),
])
def test_the_bleu_tokenizer_follows_the_target_language(lang, expected):
    assert bleu_tokenizer(lang, check=False) == expected


def test_chinese_bleu_uses_the_zh_tokenizer():
    scores, signatures = score("translation", [ZH_HYP], [ZH_REF], tgt_lang="zh")
    assert "|tok:zh|" in signatures["sacrebleu_signature"]["bleu"]
    assert scores["bleu"] == pytest.approx(BLEU(tokenize="zh").corpus_score([ZH_HYP], [[ZH_REF]]).score)
    assert scores["bleu"] == pytest.approx(72.90, abs=0.01)
    # 13a leaves an unsegmented Chinese sentence in one token: no 1-gram in common but the full stop.
    scores_13a, signatures_13a = score("translation", [ZH_HYP], [ZH_REF], tgt_lang="de")
    assert "|tok:13a|" in signatures_13a["sacrebleu_signature"]["bleu"] and scores_13a["bleu"] == 0.0
    # An explicit tokenizer wins over the language.
    _, chosen = score("translation", [ZH_HYP], [ZH_REF], tgt_lang="zh", bleu_tokenize="char")
    assert "|tok:char|" in chosen["sacrebleu_signature"]["bleu"]


def test_an_unknown_tokenizer_is_a_config_error():
    with pytest.raises(ConfigError, match="bleu_tokenize='moses' is not a sacreBLEU tokenizer.*flores200"):
        bleu_tokenizer("de", "moses")


def test_japanese_without_mecab_says_which_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "MeCab", None)  # import MeCab fails, installed or not
    with pytest.raises(ConfigError) as err:
        score("translation", ["猫です。"], ["猫です。"], tgt_lang="ja")
    message = str(err.value)
    assert "pip install 'sacrebleu[ja]'" in message and "ja-mecab" in message and "'ja'" in message
    assert "\n" not in message


def test_two_references_score_higher_than_either_alone():
    alone = [score("translation", [CANDIDATE], [ref])[0]["bleu"] for ref in (REF1, REF3)]
    both, signatures = score("translation", [CANDIDATE], [[REF1], [REF3]])
    assert [round(b, 2) for b in alone] == [39.67, 17.54]
    assert round(both["bleu"], 2) == 53.25 > max(alone)
    assert signatures["sacrebleu_signature"]["bleu"].startswith("nrefs:2|")
    assert signatures["sacrebleu_signature"]["chrf"].startswith("nrefs:2|")
    with pytest.raises(ValueError, match="in reference stream 2 of 2"):
        score("translation", [CANDIDATE], [[REF1], []])


def test_rouge_with_two_references_takes_the_best_per_summary():
    rouge_score = pytest.importorskip("rouge_score.rouge_scorer")
    hyps = ["the cat sat on the mat. it slept.", "a dog barked at the mailman."]
    refs1 = ["the cat is on the mat.", "the mailman was bitten by a dog."]
    refs2 = ["a cat sat on a mat. it slept there.", "a dog barked."]
    ours = rouge_scores(hyps, [refs1, refs2])
    scorer = rouge_score.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for key in ("rouge1", "rouge2", "rougeL"):
        expected = sum(scorer.score_multi([r1, r2], h)[key].fmeasure for h, r1, r2 in zip(hyps, refs1, refs2)) / 2
        assert ours[key] == pytest.approx(100 * expected, abs=0.1), key
    assert ours["rouge_signature"].endswith("|nrefs:2|multi-ref:best")


def _corpus(root, n_test=3):
    root.mkdir()
    for split, n in (("train", 4), ("val", 2), ("test", n_test)):
        (root / f"{split}.en").write_text("".join(f"source {i}\n" for i in range(n)))
        (root / f"{split}.de").write_text("".join(f"Ziel {i}\n" for i in range(n)))
    return root


def test_extra_reference_files_become_reference_streams(tmp_path):
    root = _corpus(tmp_path / "corpus")
    (root / "test.ref2.de").write_text("zweites Ziel 0\nzweites Ziel 1\nzweites Ziel 2\n")
    dm = Seq2SeqDataModule(str(root), "en", "de", extra_references={"test": ["test.ref2.de"]}, cache_dir=str(tmp_path))
    assert dm.reference_streams("test") == [["Ziel 0", "Ziel 1", "Ziel 2"], ["zweites Ziel 0", "zweites Ziel 1", "zweites Ziel 2"]]
    assert dm.reference_streams("val") == [["Ziel 0", "Ziel 1"]]

    (root / "test.ref2.de").write_text("zweites Ziel 0\n")
    short = Seq2SeqDataModule(str(root), "en", "de", extra_references={"test": "test.ref2.de"}, cache_dir=str(tmp_path))
    with pytest.raises(DataError, match=r"test\.ref2\.de has 1 lines but the test split .* has 3 segments"):
        short.reference_streams("test")
    with pytest.raises(ConfigError, match="extra_references.train"):
        Seq2SeqDataModule(str(root), "en", "de", extra_references={"train": ["x"]})


def test_training_with_a_japanese_target_without_mecab_stops_before_it_starts(monkeypatch):
    from types import SimpleNamespace

    from helpers.random_models import make_model
    from seq2seq.models.lit_module import Seq2SeqModule

    monkeypatch.setitem(sys.modules, "MeCab", None)
    module = Seq2SeqModule(model={}, optim={"lr": 1e-3})
    module.net = make_model()
    module._trainer = SimpleNamespace(datamodule=SimpleNamespace(tgt_lang="ja", bleu_tokenize=None))
    with pytest.raises(ConfigError, match=r"sacrebleu\[ja\]"):
        module.setup("validate")  # Lightning calls it before the sanity check and the first step
    module._trainer.datamodule.bleu_tokenize = "char"  # a tokenizer chosen in the data config
    module.setup("validate")


def test_the_model_card_shows_each_splits_signature():
    from seq2seq.inference.model_card import scores

    metrics = {"val/bleu": 30.0, "test/bleu": 28.0, "sacrebleu_signature": {"bleu": "nrefs:1|tok:13a"},
               "signatures": {"val": {"bleu": "nrefs:1|tok:13a"}, "test": {"bleu": "nrefs:2|tok:13a"}}}
    rows = {r["split"]: r["signature"] for r in scores(metrics, "translation") if r["metric"] == "bleu"}
    assert rows == {"test": "nrefs:2|tok:13a", "val": "nrefs:1|tok:13a"}
    del metrics["signatures"]  # a run written before signatures per split
    assert {r["signature"] for r in scores(metrics, "translation") if r["metric"] == "bleu"} == {"nrefs:1|tok:13a"}


# ---------------------------------------------------------------------------------- bleu_tok_lc
def test_moses_lowercase_tokenizes_as_the_moses_scripts_do():
    from seq2seq.metrics.text_metrics import moses_lowercase

    assert moses_lowercase(['Ein Mann, der "Hallo" sagt.'], "de") == ['ein mann , der " hallo " sagt .']
    # English rules split the clitic off ('s); German ones split at the apostrophe.
    assert moses_lowercase(["A man's dog"], "en") == ["a man 's dog"]
    assert moses_lowercase(["A man's dog"], "de") == ["a man ' s dog"]


def test_tokenized_lowercased_bleu_of_a_known_example():
    """Hand-counted n-grams of 'two dogs play in the snow .' against 'two dogs are playing in the snow .'."""
    import math

    scores, signatures = score("translation", ["Two dogs play in the snow."], ["two dogs are playing in the snow ."],
                               tgt_lang="en")
    # Matches: 6 of 7 unigrams, 4 of 6 bigrams, 2 of 5 trigrams, 1 of 4 4-grams; 7 tokens against 8.
    expected = 100 * math.exp(1 - 8 / 7) * (6 / 7 * 4 / 6 * 2 / 5 * 1 / 4) ** 0.25
    assert scores["bleu_tok_lc"] == pytest.approx(expected, abs=1e-9)
    assert round(scores["bleu_tok_lc"], 2) == 42.38
    # The detokenized, cased figure stays as it was and is another number ('Two' against 'two').
    assert scores["bleu"] == pytest.approx(BLEU().corpus_score(["Two dogs play in the snow."],
                                                               [["two dogs are playing in the snow ."]]).score)
    assert round(scores["bleu"], 2) == 37.68
    signature = signatures["sacrebleu_signature"]["bleu_tok_lc"]
    assert signature.startswith("Moses-tokenized, lowercased (sacremoses ") and "lang:en" in signature
    assert "|case:lc|" in signature and "|tok:none|" in signature
    assert "|tok:13a|" in signatures["sacrebleu_signature"]["bleu"]


def test_tokenized_lowercased_bleu_counts_every_reference():
    _, sig_one = score("translation", [CANDIDATE], [REF1])
    both, sig_two = score("translation", [CANDIDATE], [[REF1], [REF3]])
    one = score("translation", [CANDIDATE], [REF1])[0]
    assert both["bleu_tok_lc"] > one["bleu_tok_lc"]
    assert "nrefs:2" in sig_two["sacrebleu_signature"]["bleu_tok_lc"]
    assert "nrefs:1" in sig_one["sacrebleu_signature"]["bleu_tok_lc"]

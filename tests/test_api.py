"""The Python API (seq2seq.api.Translator): the README example as written, translate/score/attention
against the predictor and the searches, per-call overrides that leave the defaults alone, chunks."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from helpers import REPO, TOY_SENTENCES
from seq2seq.analysis.attention import attention_maps
from seq2seq.api import Translator
from seq2seq.decoding.search import DecodingConfig
from seq2seq.inference.checkpoint import load_model
from seq2seq.inference.predictor import PairScore, Predictor

pytestmark = pytest.mark.usefixtures("one_thread")

SENTENCES = TOY_SENTENCES[:5]
LONG = " ".join([SENTENCES[1]] * 8)


@pytest.fixture(scope="module")
def translator(tiny_checkpoint) -> Translator:
    return Translator.from_checkpoint(tiny_checkpoint, device="cpu", strategy="beam", beam_size=4)


def assert_close_scores(got: list[PairScore], expected: list[PairScore]) -> None:
    """Equal up to float rounding (other batches pad differently)."""
    assert [s.n_tokens for s in got] == [s.n_tokens for s in expected]
    for a, b in zip(got, expected):
        assert a.log_prob == pytest.approx(b.log_prob, abs=1e-4) and a.score == pytest.approx(b.score, abs=1e-4)


def readme_example() -> str:
    """The README's Python API block, as written."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    found = re.search(r"<!-- api-example[^>]*-->\n```python\n(.*?)```", readme, re.S)
    assert found, "README.md lost its api-example block"
    return found.group(1)


def test_readme_example_runs_as_written(tiny_checkpoint):
    code = readme_example()
    placeholder = "outputs/train/runs/<date>/<time>/checkpoints/best.ckpt"
    assert code.count(placeholder) == 1
    namespace: dict = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code.replace(placeholder, str(tiny_checkpoint)), "README.md", "exec"), namespace)
    lines = printed.getvalue().splitlines()
    assert len(lines) == 4, printed.getvalue()
    translator, best, scores, attention = (namespace[k] for k in ("translator", "best", "scores", "attention"))
    assert all(isinstance(t, str) and t for t in translator.translate(namespace["sentences"]))
    assert all(len(pairs) == 2 and pairs[0][1] >= pairs[1][1] for pairs in best)
    # What the README's comment promises: forced decoding of the beam's best gives its score.
    assert scores[0].score == pytest.approx(best[0][0][1], abs=1e-4)
    assert attention.target_words[-1] == "</s>" and attention.mean.shape == (
        len(attention.target_words), len(attention.source_words))


def test_import_stays_light():
    """``import seq2seq`` loads no torch; the API and the translate command load no matplotlib."""
    code = ("import sys, seq2seq; assert 'torch' not in sys.modules; "
            "from seq2seq import Translator; import seq2seq.translate; assert 'matplotlib' not in sys.modules; "
            "print(Translator.__module__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "seq2seq.api", result.stderr[-2000:]


def test_translate_is_the_predictor_and_overrides_do_not_stick(translator, tiny_checkpoint):
    net, tokenizer = load_model(tiny_checkpoint)
    beam = DecodingConfig(strategy="beam", beam_size=4)
    lines = [*SENTENCES, "", "   "]
    expected = [pairs[0][0] for pairs in Predictor(net, tokenizer, beam).translate(lines)]
    assert translator.translate(lines, batch_size=2) == expected
    assert translator.translate(lines[0]) == expected[0]
    assert expected[-2:] == ["", ""]

    greedy = [pairs[0][0] for pairs in Predictor(net, tokenizer, DecodingConfig()).translate(lines)]
    assert translator.translate(lines, strategy="greedy") == greedy
    nbest = translator.translate(lines, n_best=3)
    assert [len(pairs) for pairs in nbest] == [3] * len(lines)
    assert [pairs[0][0] for pairs in nbest] == expected
    assert all(pairs[0][1] >= pairs[1][1] >= pairs[2][1] for pairs in nbest[:len(SENTENCES)])
    sampled = translator.translate(lines[:2], strategy="sampling", n_best=2, seed=3, top_k=5)
    assert sampled == translator.translate(lines[:2], strategy="sampling", n_best=2, seed=3, top_k=5)

    # None of those calls changed the defaults, and the copy handed out is not them.
    assert translator.decoding == replace(DecodingConfig(), strategy="beam", beam_size=4)
    copy = translator.decoding
    copy.beam_size = 1
    assert translator.decoding.beam_size == 4
    assert translator.translate(lines) == expected

    with pytest.raises(TypeError, match="beam_sise"):
        translator.translate(lines, beam_sise=3)
    with pytest.raises(Exception, match="n_best=5 is larger"):
        translator.translate(lines, n_best=5)


def test_truncation_warns_with_line_numbers(translator):
    messages: list[str] = []
    out = translator.translate(["", LONG], max_src_len=16, warn=messages.append)
    assert len(out) == 2 and out[0] == "" and out[1]
    assert len(messages) == 1 and messages[0].startswith("line 2:") and "truncated to 16" in messages[0]
    with pytest.warns(UserWarning, match="line 1: .* truncated"):
        translator.translate([LONG], max_src_len=16)


def test_chunks_equal_one_call_and_count_lines_across_chunks(translator):
    lines = [SENTENCES[0], "", LONG, *SENTENCES[1:], LONG]
    expected_warnings: list[str] = []
    whole = translator.translate(lines, max_src_len=16, warn=expected_warnings.append)
    messages: list[str] = []
    done: list[int] = []
    pieces = list(translator.translate_chunks(iter(lines), chunk_lines=3, max_src_len=16, warn=messages.append,
                                              progress=done.append))
    assert [len(p) for p in pieces] == [3, 3, 2]
    assert [t for piece in pieces for t in piece] == whole
    assert messages == expected_warnings and len(messages) >= 2
    assert messages[0].startswith("line 3:") and messages[-1].startswith(f"line {len(lines)}:")
    assert done == sorted(done) and done[-1] == len(lines)

    pairs = list(zip(lines, whole))
    scored = [s for piece in translator.score_chunks(iter(pairs), chunk_lines=2, max_src_len=16, warn=None)
              for s in piece]
    assert_close_scores(scored, translator.score(lines, whole, max_src_len=16, warn=None))


def test_score_gives_the_scores_the_searches_reported(translator, tiny_checkpoint):
    """Forced decoding of greedy and beam outputs reproduces the searches' log-probabilities and
    scores (same tokens when the text re-encodes to them), batched or one by one."""
    net, tokenizer = load_model(tiny_checkpoint)
    compared = 0
    for decoding in (DecodingConfig(strategy="greedy", alpha=0.6), DecodingConfig(strategy="beam", beam_size=4, alpha=1.0)):
        predictor = Predictor(net, tokenizer, decoding)
        src = tokenizer.encode_source(SENTENCES)
        hyps = [predictor.generate(torch.tensor([ids]))[0][0] for ids in src]
        texts = predictor.texts(hyps)
        scores = translator.score(SENTENCES, texts, alpha=decoding.alpha, batch_size=2)
        assert_close_scores(scores, [translator.score([s], [t], alpha=decoding.alpha)[0] for s, t in zip(SENTENCES, texts)])
        for hyp, text, got in zip(hyps, texts, scores):
            assert isinstance(got, PairScore)
            if not hyp.eos or tokenizer.encode_target([text])[0] != hyp.tokens:
                continue  # cut at the length limit, or text that re-encodes to other pieces
            compared += 1
            assert got.n_tokens == hyp.num_scored
            assert got.log_prob == pytest.approx(hyp.log_prob, abs=1e-4)
            assert got.score == pytest.approx(hyp.score, abs=1e-4)
    assert compared >= 6

    # Blank lines: a blank source is not scored (with a warning if its target is not blank); a
    # blank target is the empty output, EOS alone.
    messages: list[str] = []
    blank = translator.score(["", "  ", SENTENCES[0]], ["Ein Hund.", "", ""], warn=messages.append)
    assert blank[:2] == [PairScore(0.0, 0, 0.0), PairScore(0.0, 0, 0.0)]
    assert blank[2].n_tokens == 1 and blank[2].log_prob < 0
    assert len(messages) == 1 and messages[0].startswith("line 1: blank source")
    with pytest.raises(ValueError, match="2 sources but 1 targets"):
        translator.score(SENTENCES[:2], SENTENCES[:1])


def test_attention_per_layer_and_mean_in_words(translator, tiny_checkpoint):
    net, tokenizer = load_model(tiny_checkpoint)
    sentence = "Often the green women have washed the horse."
    attention = translator.attention(sentence)
    maps = attention_maps(net, tokenizer, sentence, decoding=replace(translator.decoding, n_best=1))
    assert attention.translation == maps.translation == translator.translate(sentence)
    assert len(attention.layers) == maps.num_layers == net.config.num_decoder_layers
    words, source_words, mean = maps.cross_map("mean")
    assert attention.target_words == words and attention.source_words == source_words
    assert source_words[:3] == ["Often", "the", "green"] and words[-1] == "</s>"
    torch.testing.assert_close(attention.mean, mean)
    torch.testing.assert_close(attention.mean, torch.stack(attention.layers).mean(0))
    torch.testing.assert_close(attention.mean.sum(1), torch.ones(len(words)))
    forced = translator.attention(sentence, target="Oft haben die grünen Frauen das Pferd gewaschen.")
    assert forced.translation == "Oft haben die grünen Frauen das Pferd gewaschen."
    assert forced.target_words[:2] == ["Oft", "haben"]

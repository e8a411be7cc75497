"""Attention extraction, word-level heatmaps, the attention command, and what validation logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers.forked_commands import run_command
from seq2seq.analysis.attention import (
    AttentionMaps,
    attention_maps,
    plot_cross_attention,
    strongest_sources,
    word_groups,
)
from seq2seq.inference.checkpoint import load_model as load_checkpoint
from seq2seq.models.transformer import Seq2SeqTransformer, TransformerConfig

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _net(pre_norm: bool) -> Seq2SeqTransformer:
    torch.manual_seed(0)
    cfg = TransformerConfig(src_vocab_size=50, tgt_vocab_size=50, d_model=32, num_heads=4, num_encoder_layers=2,
                            num_decoder_layers=3, d_ff=64, dropout=0.0, pre_norm=pre_norm)
    return Seq2SeqTransformer(cfg).eval()


@pytest.mark.parametrize("pre_norm", [True, False])
def test_attention_weights_are_the_forward_pass(pre_norm):
    """Same logits as the fused path; rows sum to 1; padded keys and future keys get exactly 0."""
    net = _net(pre_norm)
    src = torch.tensor([[5, 6, 7, 8, 2], [9, 10, 2, 0, 0]])  # second row: two padded positions
    tgt_in = torch.tensor([[1, 11, 12, 13], [1, 14, 15, 16]])
    out = net.attention(src, tgt_in)
    with torch.no_grad():
        expected = net(src, tgt_in)
    assert (out["logits"] - expected).abs().max() <= 1e-5
    assert len(out["encoder"]) == 2 and len(out["decoder"]) == 3 and len(out["cross"]) == 3
    assert out["cross"][0].shape == (2, 4, 4, 5) and out["decoder"][0].shape == (2, 4, 4, 4)
    assert out["encoder"][0].shape == (2, 4, 5, 5)
    for maps in out.values():
        if isinstance(maps, list):
            for w in maps:
                assert torch.allclose(w.sum(-1), torch.ones(()), atol=1e-5)
    for w in out["cross"] + out["encoder"]:
        assert w[1, :, :, 3:].abs().max() == 0.0  # padded source keys
        assert w[1, :, :, :3].min() > 0.0
    causal_future = torch.ones(4, 4, dtype=torch.bool).triu(1)
    for w in out["decoder"]:
        assert w[..., causal_future].abs().max() == 0.0


def test_word_groups_merge_sentencepiece_pieces():
    words, groups = word_groups(["\u2581A", "\u2581bi", "ke", ".", "\u2581", "Ö", "l", "</s>"])
    assert words == ["A", "bike.", "Öl", "</s>"]
    assert groups == [[0], [1, 2, 3], [4, 5, 6], [7]]


def _maps(cross: torch.Tensor) -> AttentionMaps:
    layers, heads, t, s = cross.shape
    return AttentionMaps(
        source="x", translation="y",
        src_pieces=["\u2581a", "\u2581bi", "ke", "</s>"], tgt_pieces=["\u2581Fahr", "rad", "\u2581da", "</s>"],
        cross=cross, encoder=torch.zeros(layers, heads, s, s), decoder=torch.zeros(layers, heads, t, t),
    )


def test_word_level_map_and_strongest_sources_on_known_weights():
    # One layer, two heads over 4 target pieces x 4 source pieces.
    head0 = torch.tensor([[0.1, 0.5, 0.3, 0.1], [0.0, 0.2, 0.8, 0.0], [0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7]])
    head1 = torch.tensor([[0.3, 0.3, 0.3, 0.1], [0.2, 0.2, 0.2, 0.4], [0.9, 0.0, 0.0, 0.1], [0.0, 0.0, 0.0, 1.0]])
    maps = _maps(torch.stack([head0, head1]).unsqueeze(0))
    tgt, src, weights = maps.cross_map(layer=0)
    assert tgt == ["Fahrrad", "da", "</s>"] and src == ["a", "bike", "</s>"]
    # "Fahrrad": mean of its two pieces' rows (heads averaged), "bike": sum of its two pieces' columns.
    mean_rows = (head0 + head1) / 2
    fahrrad = (mean_rows[0] + mean_rows[1]) / 2
    assert torch.allclose(weights[0], torch.stack([fahrrad[0], fahrrad[1] + fahrrad[2], fahrrad[3]]))
    assert torch.allclose(weights.sum(1), torch.ones(3))
    best = strongest_sources(maps, layer=0)
    assert [(t, s) for t, s, _ in best] == [("Fahrrad", "bike"), ("da", "a"), ("</s>", "</s>")]
    assert best[1][2] == pytest.approx(0.8)
    assert [s for _, s, _ in strongest_sources(maps, layer=0, head=1, words=False)] == ["\u2581a", "</s>", "\u2581a", "</s>"]
    fig = plot_cross_attention(maps)
    assert len(fig.axes) == 2  # one layer (no mean panel for a single layer) + colorbar


def test_attention_maps_of_a_trained_checkpoint(tiny_checkpoint):
    net, tokenizer = load_checkpoint(tiny_checkpoint)
    maps = attention_maps(net, tokenizer, "the small dog sees the old man .")
    cfg = net.config
    n_tgt, n_src = len(maps.tgt_pieces), len(maps.src_pieces)
    assert maps.cross.shape == (cfg.num_decoder_layers, cfg.num_heads, n_tgt, n_src)
    assert maps.tgt_pieces[-1] == "</s>" and maps.src_pieces[-1] == "</s>"
    assert maps.translation and "".join(maps.tgt_pieces[:-1]).replace("\u2581", " ").strip() == maps.translation
    tgt, src, weights = maps.cross_map("mean")
    assert torch.allclose(weights.sum(1), torch.ones(len(tgt)), atol=1e-5)
    fig = plot_cross_attention(maps)
    # One panel per decoder layer, the mean of layers, and the colorbar.
    assert len(fig.axes) == cfg.num_decoder_layers + (1 if cfg.num_decoder_layers > 1 else 0) + 1
    # Forcing the reference instead of decoding.
    forced = attention_maps(net, tokenizer, "the dog .", target="der Hund .")
    assert forced.translation == "der Hund ."


def test_attention_command_writes_png_and_strongest_words(tiny_checkpoint, tmp_path):
    out = tmp_path / "figs" / "heat.png"
    result = run_command("seq2seq.attention", [f"ckpt_path={tiny_checkpoint}", "text=the dog sees the man .",
                                               f"output={out}", "device=cpu"], cwd=tmp_path, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes().startswith(PNG_MAGIC)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("translation: ") and lines[-1] == f"heatmap: {out}"
    assert all("\t<- " in line for line in lines[1:-1]) and len(lines) > 3
    missing = run_command("seq2seq.attention", [f"ckpt_path={tiny_checkpoint}", f"output={tmp_path / 'x.png'}"],
                          cwd=tmp_path, text=True, timeout=120)
    assert missing.returncode == 2 and missing.stderr.strip().splitlines() == [
        'error: text is missing: pass text="a sentence to translate"'
    ]
    assert not (tmp_path / "x.png").exists()


def test_validation_logs_samples_and_heatmap_to_csv_folder(tiny_run):
    """The default callbacks write val_samples.jsonl and the latest heatmap beside metrics.csv."""
    folder = Path(tiny_run["run_dir"]) / "csv"
    records = [json.loads(line) for line in (folder / "val_samples.jsonl").read_text().splitlines()]
    steps = sorted({r["step"] for r in records})
    assert len(steps) >= 2 and all(sum(r["step"] == s for r in records) == 5 for s in steps)
    first = [r for r in records if r["step"] == steps[-1]][0]
    val_src = (Path(tiny_run["data_dir"]) / "val.en").read_text().splitlines()
    val_ref = (Path(tiny_run["data_dir"]) / "val.de").read_text().splitlines()
    assert (first["source"], first["reference"]) == (val_src[0], val_ref[0]) and first["hypothesis"]
    assert (folder / "cross_attention.png").read_bytes().startswith(PNG_MAGIC)

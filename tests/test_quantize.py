"""The linear layers of a loaded network on the CPU: float32 packed for oneDNN by default (outputs
as the plain network's), int8 with quantize=int8 (outputs close to float32), through the API and the
translate command; refusals as one-line user errors."""

from __future__ import annotations

import pytest
import torch

from helpers import TOY_SENTENCES, assert_one_line_error, command_env, run_command
from seq2seq.api import Translator
from seq2seq.errors import ConfigError
from seq2seq.inference.checkpoint import load_model
from seq2seq.inference.quantize import Int8Linear, PackedLinear, pack_linear_layers, quantize

pytestmark = pytest.mark.usefixtures("one_thread")


def test_int8_translator_quantizes_every_linear_layer_and_stays_close_to_float32(tiny_checkpoint):
    fp32 = Translator.from_checkpoint(tiny_checkpoint, device="cpu", strategy="greedy")
    int8 = Translator.from_checkpoint(tiny_checkpoint, device="cpu", strategy="greedy", quantize="int8")
    linear = [m for m in int8.net.modules() if type(m) is torch.nn.Linear]
    dynamic = [m for m in int8.net.modules() if isinstance(m, Int8Linear)]
    # Encoder layer: qkv, out, fc1, fc2; decoder layer: those and cross-attention's q, kv, out.
    layers = fp32.net.config.num_encoder_layers * 4 + fp32.net.config.num_decoder_layers * 7
    assert not linear and len(dynamic) == layers + 1  # + the vocabulary projection
    assert any(m is int8.net.decoder.output.projection for m in dynamic)
    assert int8.num_parameters == fp32.num_parameters == fp32.net.num_parameters() and int8.quantize == "int8"
    # Forced decoding of float32's outputs: the int8 log-probabilities differ by rounding only.
    outputs = fp32.translate(TOY_SENTENCES)
    scores_fp32 = [s.log_prob for s in fp32.score(TOY_SENTENCES, outputs)]
    scores_int8 = [s.log_prob for s in int8.score(TOY_SENTENCES, outputs)]
    tokens = sum(s.n_tokens for s in fp32.score(TOY_SENTENCES, outputs))
    assert sum(abs(a - b) for a, b in zip(scores_fp32, scores_int8)) / tokens < 0.05
    assert scores_fp32 != scores_int8  # int8 did run
    same = sum(a == b for a, b in zip(outputs, int8.translate(TOY_SENTENCES)))
    assert same >= 0.7 * len(TOY_SENTENCES), same


def test_translator_packs_float32_linear_layers_and_decodes_as_the_plain_network(tiny_checkpoint):
    packed = Translator.from_checkpoint(tiny_checkpoint, device="cpu", strategy="greedy")
    plain = Translator(*load_model(tiny_checkpoint, "cpu"), packed.decoding, device="cpu")
    config = plain.net.config
    layers = config.num_encoder_layers * 4 + config.num_decoder_layers * 7
    assert len([m for m in packed.net.modules() if isinstance(m, PackedLinear)]) == layers + 1  # + vocabulary
    assert isinstance(packed.net.decoder.output.projection, PackedLinear)
    assert not [m for m in packed.net.modules() if type(m) is torch.nn.Linear]
    assert plain.net.decoder.output.projection is None and type(plain.net.decoder.layers[0].ffn.fc1) is torch.nn.Linear
    assert packed.num_parameters == plain.num_parameters
    for strategy in ("greedy", "beam"):
        assert packed.translate(TOY_SENTENCES, strategy=strategy) == plain.translate(TOY_SENTENCES, strategy=strategy)
    outputs = plain.translate(TOY_SENTENCES)
    differences = [abs(a.log_prob - b.log_prob)
                   for a, b in zip(packed.score(TOY_SENTENCES, outputs), plain.score(TOY_SENTENCES, outputs))]
    assert max(differences) < 1e-3, differences
    # Nothing to pack on a GPU, nor in a network that is not float32.
    half, _ = load_model(tiny_checkpoint, "cpu")
    assert pack_linear_layers(half.bfloat16(), torch.device("cpu")).decoder.output.projection is None
    assert pack_linear_layers(plain.net, torch.device("cuda")) is plain.net and plain.net.decoder.output.projection is None


def test_int8_linear_rounds_each_row_on_its_own():
    """Per-row (token) input scales: a row's output is the same in any batch, and close to float32."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    int8 = Int8Linear(linear)
    rows = torch.randn(40, 64)
    rows[7] *= 50.0  # one row with large values: with one scale per batch it would coarsen every row
    batched = int8(rows)
    alone = torch.cat([int8(rows[i : i + 1]) for i in range(40)])
    assert torch.equal(batched, alone)
    assert int8(rows.view(5, 8, 64)).shape == (5, 8, 48)
    exact = linear(rows).detach()
    error = (batched - exact).abs().amax(dim=1) / exact.abs().amax(dim=1)
    assert error.max() < 0.03, error.max()
    assert not torch.equal(batched, exact)


def test_quantize_refusals(tiny_checkpoint):
    net, _ = load_model(tiny_checkpoint, "cpu")
    with pytest.raises(ConfigError, match="quantize='int4'"):
        quantize(net, "int4", torch.device("cpu"))
    with pytest.raises(ConfigError, match="runs on the CPU"):
        quantize(net, "int8", torch.device("cuda"))
    assert quantize(net, None, torch.device("cpu")) is net and type(net.decoder.layers[0].ffn.fc1) is torch.nn.Linear


def test_translate_command_with_quantize_int8(tiny_checkpoint, tmp_path):
    source = tmp_path / "source.txt"
    source.write_text("\n".join(TOY_SENTENCES[:4]) + "\n", encoding="utf-8")
    common = [f"ckpt_path={tiny_checkpoint}", "input=source.txt", "device=cpu", "progress=false", "decoding=greedy"]
    env = command_env(tmp_path, threads=1)
    result = run_command("seq2seq.translate", [*common, "quantize=int8"], cwd=tmp_path, env=env, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    expected = Translator.from_checkpoint(tiny_checkpoint, device="cpu", strategy="greedy", quantize="int8")
    assert result.stdout.splitlines() == expected.translate(TOY_SENTENCES[:4])
    refused = run_command("seq2seq.translate", [*common, "quantize=int4"], cwd=tmp_path, env=env, text=True, timeout=300)
    assert_one_line_error(refused, "quantize='int4'")

"""The training fast path: pad-skipping fused loss, compile-safe checkpoints, deferred NaN checks."""

import pytest
import torch
import torch.nn.functional as F

from helpers import TINY_OVERRIDES, compose_train, poison_loss_at_step
from seq2seq.data.datamodule import collate
from seq2seq.data.tokenizer import Tokenizer
from seq2seq.decoding.search import DecodingConfig, greedy_search
from seq2seq.errors import TrainingError
from seq2seq.models.lit_module import Seq2SeqModule
from seq2seq.models.loss import (
    fused_linear_label_smoothed_ce,
    label_smoothed_nll,
    plain_sequence_loss,
    right_padded,
    sequence_loss,
    source_index,
    target_index,
)
from seq2seq.models.transformer import Seq2SeqTransformer, TransformerConfig
from seq2seq.train import train
from seq2seq.training.compile import resolve_compile
from seq2seq.training.optimizer import build_optimizer

PAD, BOS, EOS = 0, 2, 3
VOCAB = 53


def tiny_net(dtype=torch.float64, vocab=VOCAB, **config) -> Seq2SeqTransformer:
    torch.manual_seed(0)
    cfg = TransformerConfig(src_vocab_size=vocab, tgt_vocab_size=vocab, d_model=16, num_heads=2,
                            num_encoder_layers=1, num_decoder_layers=1, d_ff=32, dropout=0.0, **config)
    net = Seq2SeqTransformer(cfg).to(dtype)
    if net.decoder.output.bias is not None:  # a bias that matters (it starts at 0)
        torch.nn.init.normal_(net.decoder.output.bias)
    return net


def padded_batch(src_lens=(7, 3, 5, 1, 6), tgt_lens=(4, 6, 2, 5, 1), vocab=VOCAB, seed=1) -> dict:
    g = torch.Generator().manual_seed(seed)
    items = [(i, torch.randint(4, vocab, (s,), generator=g).tolist() + [EOS],
              torch.randint(4, vocab, (t,), generator=g).tolist()) for i, (s, t) in enumerate(zip(src_lens, tgt_lens))]
    return collate(items)


def grads(net) -> dict:
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("output_bias", [False, True])
def test_pad_skipping_loss_equals_label_smoothed_cross_entropy(eps, fused, output_bias):
    net, b = tiny_net(output_bias=output_bias, activation="swish" if output_bias else "relu"), padded_batch()
    assert (b["tgt_out"] == PAD).any()  # the batch has padding to skip
    ref, ref_nll = plain_sequence_loss(net, b["src"], b["tgt_in"], b["tgt_out"], eps)
    ref.backward()
    ref_grads = grads(net)
    net.zero_grad()
    index = target_index(b["tgt_out"], PAD)
    smoothed, nll = sequence_loss(net, b["src"], b["tgt_in"], b["tgt_out"], eps, index, fused=fused, chunk=4)
    smoothed.backward()
    n = int((b["tgt_out"] != PAD).sum())
    assert abs(smoothed.item() - ref.item()) < 1e-5 and abs(nll.item() - ref_nll.item()) < 1e-5
    assert abs(smoothed.item() / n - ref.item() / n) < 1e-5  # per token
    for name, g in grads(net).items():
        assert torch.allclose(g, ref_grads[name], atol=1e-5, rtol=0), name


@pytest.mark.parametrize("pre_norm,share,activation", [(False, True, "relu"), (True, False, "gelu")])
def test_unpadded_forward_equals_padded_forward_at_real_positions(pre_norm, share, activation):
    torch.manual_seed(0)
    cfg = TransformerConfig(src_vocab_size=VOCAB, tgt_vocab_size=VOCAB, d_model=16, num_heads=2,
                            num_encoder_layers=2, num_decoder_layers=2, d_ff=32, dropout=0.0,
                            pre_norm=pre_norm, share_embeddings=share, activation=activation)
    net, b = Seq2SeqTransformer(cfg).double(), padded_batch()
    tgt_index, src_index = target_index(b["tgt_out"], PAD), source_index(b["src"], PAD)
    states = net.target_states(b["src"], b["tgt_in"], tgt_index, src_index)[0]
    padded = net.decoder.states(b["tgt_in"], *net.encode(b["src"]))[0]
    assert torch.allclose(states, padded.reshape(-1, 16)[tgt_index], atol=1e-10, rtol=0)
    # And the loss and its gradients through it equal the reference.
    ref, _ = plain_sequence_loss(net, b["src"], b["tgt_in"], b["tgt_out"], 0.1)
    ref.backward()
    ref_grads = grads(net)
    net.zero_grad()
    loss, _ = sequence_loss(net, b["src"], b["tgt_in"], b["tgt_out"], 0.1, tgt_index, src_index=src_index, unpad=True)
    loss.backward()
    assert abs(loss.item() - ref.item()) < 1e-5
    for name, g in grads(net).items():
        assert torch.allclose(g, ref_grads[name], atol=1e-5, rtol=0), name


def test_unpadded_dropout_keeps_the_rate_and_the_expectation():
    from seq2seq.models.transformer import Dropout

    drop, x = Dropout(0.25), torch.ones(200_000)
    torch.manual_seed(0)
    y = drop(x)
    assert abs((y == 0).float().mean().item() - 0.25) < 0.005
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.75)) and abs(y.mean().item() - 1) < 0.01
    drop.eval()
    assert drop(x) is x


def test_dropout_mask_rate_is_p_in_every_16_bit_lane():
    """Four mask elements share one 64-bit draw: each lane must drop at rate p (a draw
    confined to [0, 2**63) would never drop in the top lane's lower half)."""
    from seq2seq.models.transformer import Dropout

    drop, x = Dropout(0.1), torch.ones(400_000)
    torch.manual_seed(0)
    y = drop(x)
    rates = (y == 0).view(-1, 4).float().mean(dim=0)
    assert torch.all((rates - 0.1).abs() < 0.004), rates
    keep_rate = 1 - round(0.1 * 65536) / 65536
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / keep_rate))
    torch.manual_seed(0)
    assert torch.equal(drop(x), y)  # the global seed makes it reproducible
    torch.manual_seed(0)
    odd = drop(torch.ones(7, 3))  # sizes that are not a multiple of four
    assert odd.shape == (7, 3) and torch.allclose(odd[odd != 0], torch.tensor(1 / keep_rate))


def test_right_padded():
    assert right_padded(torch.tensor([[5, 6, 0], [5, 0, 0]]), PAD)
    assert not right_padded(torch.tensor([[5, 0, 6]]), PAD)
    assert right_padded(padded_batch()["tgt_out"], PAD)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_per_token_loss_equals_cross_entropy(eps):
    torch.manual_seed(0)
    logits, target = torch.randn(40, VOCAB), torch.randint(0, VOCAB, (40,))
    target[::3] = PAD
    keep = target != PAD
    ref = F.cross_entropy(logits, target, ignore_index=PAD, label_smoothing=eps, reduction="none")
    per_token, nll = label_smoothed_nll(logits[keep], target[keep], eps, reduction="none")
    assert torch.allclose(per_token, ref[keep], atol=1e-5, rtol=0)
    assert torch.allclose(nll, F.cross_entropy(logits, target, ignore_index=PAD, reduction="none")[keep], atol=1e-5)
    total, _ = label_smoothed_nll(logits[keep], target[keep], eps)
    ref_sum = F.cross_entropy(logits, target, ignore_index=PAD, label_smoothing=eps, reduction="sum")
    assert abs(total.item() - ref_sum.item()) <= 1e-5 * ref_sum.item()


@pytest.mark.parametrize("with_bias", [False, True])
def test_fused_loss_chunks_agree_in_fp32_and_keep_only_one_backward(with_bias):
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, requires_grad=True)
    weight = torch.randn(VOCAB, 16, requires_grad=True)
    bias = torch.randn(VOCAB, requires_grad=True) if with_bias else None
    target = torch.randint(0, VOCAB, (37,))
    inputs = (hidden, weight, bias) if with_bias else (hidden, weight)
    ref = F.cross_entropy(F.linear(hidden, weight, bias), target, label_smoothing=0.1, reduction="sum")
    ref_grads = torch.autograd.grad(ref, inputs)
    for chunk in (1, 5, 37, 1000, None):
        loss, _ = fused_linear_label_smoothed_ce(hidden, weight, target, 0.1, chunk, bias=bias)
        assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
        for g, r in zip(torch.autograd.grad(loss * 2, inputs), ref_grads):
            assert torch.allclose(g, 2 * r, atol=1e-4, rtol=1e-4)
    loss, _ = fused_linear_label_smoothed_ce(hidden, weight, target, 0.1)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward"):
        loss.backward()


def test_fused_loss_under_bf16_autocast():
    net, b = tiny_net(torch.float32), padded_batch()
    ref, _ = plain_sequence_loss(net, b["src"], b["tgt_in"], b["tgt_out"], 0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = sequence_loss(net, b["src"], b["tgt_in"], b["tgt_out"], 0.1, fused=True)
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(ref.item(), rel=3e-2)
    loss.backward()
    assert net.decoder.output.weight.grad.dtype == torch.float32


def test_compile_option_and_optimizer():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not resolve_compile("auto", cpu) and resolve_compile("auto", cuda)
    assert resolve_compile(True, cpu) and resolve_compile("true", cpu) and not resolve_compile("false", cuda)
    with pytest.raises(ValueError, match="speed.compile"):
        resolve_compile("sometimes", cpu)
    net = tiny_net(torch.float32)
    opt = build_optimizer(net.named_parameters(), {"lr": 1e-3, "weight_decay": 0.1})
    # Fused where this torch has the kernel for the parameters' device (CUDA; CPU since torch 2.4).
    fused_cpu = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 4)
    assert bool(opt.defaults.get("fused")) == fused_cpu
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])


def test_collate_pads_lengths_to_a_multiple():
    items = [(0, [5, 6, 3], [7, 8]), (1, [5, 3], [7, 8, 9, 10, 11, 12, 13, 14])]
    plain, padded = collate(items), collate(items, pad_to_multiple=8)
    assert padded["src"].shape == (2, 8) and padded["tgt_in"].shape == (2, 16)
    for key in ("src", "tgt_in", "tgt_out"):
        n = plain[key].size(1)
        assert torch.equal(padded[key][:, :n], plain[key]) and (padded[key][:, n:] == PAD).all()


def small_tokenizer() -> Tokenizer:
    words = "the a cat dog sees likes big small red house tree runs".split()
    g = torch.Generator().manual_seed(0)
    lines = [" ".join(words[i] for i in torch.randint(0, len(words), (6,), generator=g).tolist()) for _ in range(300)]
    return Tokenizer.train(lines, lines, vocab_size=40)


@pytest.mark.filterwarnings(r"ignore:You are trying to `self.log\(\)`")
def test_checkpoint_of_compiled_module_has_plain_keys_and_loads_uncompiled(tmp_path):
    from seq2seq.inference.checkpoint import load_model as load_checkpoint

    model = {"d_model": 32, "num_heads": 2, "num_encoder_layers": 1, "num_decoder_layers": 1, "d_ff": 64,
             "dropout": 0.1}
    tokenizer = small_tokenizer()
    module = Seq2SeqModule(model=model, optim={"lr": 1e-2, "warmup_steps": 1, "label_smoothing": 0.1},
                           tokenizer=tokenizer, speed={"compile": True})
    module.setup("fit")  # compiles the training loss (lazily); the module itself stays unwrapped
    assert module._compiled_loss is not None
    # A few eager steps (compiling on a CPU takes minutes: the compiled run is the slow test below).
    module._compiled_loss = None
    optimizer = build_optimizer(module.named_parameters(), module.hparams.optim)
    b = padded_batch(vocab=tokenizer.src_vocab_size)
    assert torch.equal(b["tgt_index"], target_index(b["tgt_out"], PAD))  # collate finds the real tokens
    for _ in range(3):
        optimizer.zero_grad()
        loss = module.training_step(b, 0)
        loss.backward()
        optimizer.step()
    state = module.state_dict()
    assert state and all(k.startswith("net.") and "_orig_mod" not in k for k in state)
    checkpoint = {"state_dict": state}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "m.ckpt")
    net, _ = load_checkpoint(tmp_path / "m.ckpt", torch.device("cpu"))
    module.eval()
    cfg = DecodingConfig(max_len_a=0.0, max_len_b=12)
    assert greedy_search(net, b["src"], cfg) == greedy_search(module.net, b["src"], cfg)


QUICK = TINY_OVERRIDES + ["data.generate.sizes={train:600,val:32,test:32}", "trainer.max_epochs=2",
                          "trainer.max_time=null"]


def test_deferred_nonfinite_check_names_the_first_bad_step(tmp_path, monkeypatch):
    """The sync-free check GPUs use (every N steps) still names the step whose loss went NaN."""
    poison_loss_at_step(monkeypatch, 2)
    cfg = compose_train(tmp_path, QUICK + ["optim.nonfinite_check_every=4", "test=false"])
    with pytest.raises(TrainingError, match=r"non-finite loss \(nan\) at step 2 \(found by the periodic check\)"):
        train(cfg)


def test_fused_adamw_keeps_gradient_clipping_under_mixed_precision(tmp_path, monkeypatch):
    """Lightning refuses clipping for optimizers that unscale in step() (fused AdamW says it does):
    under bf16-mixed the fused AdamW must still step on gradients clipped to the norm."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    clip, before, after, fused = 0.05, [], [], []

    def norm(params) -> float:
        return float(torch.linalg.vector_norm(torch.stack([p.grad.float().norm() for p in params if p.grad is not None])))

    def record_unclipped(self, optimizer):  # Lightning calls it after backward, before clipping
        before.append(norm(self.parameters()))

    def record_stepped(optimizer, args, kwargs):  # after step(): .grad still holds what it used
        fused.append(bool(optimizer.defaults.get("fused")))
        after.append(norm(p for group in optimizer.param_groups for p in group["params"]))

    monkeypatch.setattr(Seq2SeqModule, "on_before_optimizer_step", record_unclipped)
    handle = register_optimizer_step_post_hook(record_stepped)
    try:
        metrics = train(compose_train(tmp_path, QUICK + ["trainer.max_steps=2", "trainer.precision=bf16-mixed",
                                                         f"trainer.gradient_clip_val={clip}", "test=false"]))
    finally:
        handle.remove()
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert fused == [True, True] and len(before) == len(after) == 2
    for unclipped, stepped in zip(before, after):
        assert unclipped > 2 * clip  # clipping had something to do (measured: 1.5)
        assert stepped == pytest.approx(clip, rel=1e-3)  # and the optimizer stepped on the clipped norm


# In the fast suite, as speed.compile=auto compiles every CUDA run: compiling this graph (forward +
# backward, inductor C++ kernels) from a cold cache takes 46 s on a quiet 2-core CPU (17 s with the
# inductor cache warm; 77 s when other jobs load the machine).
@pytest.mark.filterwarnings(r"ignore:You are trying to `self.log\(\)`")
def test_compiled_training_step_equals_eager_and_compiles_once():
    """speed.compile's training path (Seq2SeqModule: compile_dynamic over sequence_loss) on a
    2-layer d32 model: the compiled loss and gradients equal the eager ones on 3 batches of
    different sizes and lengths, from one graph (dynamic shapes, no recompilation; a plain
    ``torch.compile`` makes a second graph at the second shape and fails here)."""
    counters = torch._dynamo.utils.counters
    torch._dynamo.reset()
    tokenizer = small_tokenizer()
    model = {"d_model": 32, "num_heads": 2, "num_encoder_layers": 2, "num_decoder_layers": 2, "d_ff": 64,
             "dropout": 0.0}
    module = Seq2SeqModule(model=model, optim={"lr": 1e-3, "warmup_steps": 1, "label_smoothing": 0.1},
                           tokenizer=tokenizer, speed={"compile": True})
    module.setup("fit")
    compiled = module._compiled_loss
    assert compiled is not None
    module.train()
    vocab = tokenizer.src_vocab_size
    batches = [padded_batch((7, 3, 5, 2, 6), (4, 6, 2, 5, 3), vocab, seed=1),
               padded_batch((9, 4, 2), (3, 8, 5), vocab, seed=2),
               padded_batch((5, 11, 3, 8, 2, 6, 4), (6, 2, 9, 4, 3, 7, 5), vocab, seed=3)]
    assert len({(b["src"].shape, b["tgt_in"].shape) for b in batches}) == 3
    counters.clear()
    for b in batches:
        assert "src_index" in b and "tgt_index" in b  # from collate: the unpadded path, as training runs it
        results = {}
        for name, fn in (("eager", None), ("compiled", compiled)):
            module._compiled_loss = fn
            module.zero_grad(set_to_none=True)
            loss = module.training_step(b, 0)
            loss.backward()
            results[name] = (loss.item(), grads(module))
        (eager, eager_grads), (comp, comp_grads) = results["eager"], results["compiled"]
        assert comp == pytest.approx(eager, rel=1e-5)
        assert eager_grads.keys() == comp_grads.keys()
        for name, g in comp_grads.items():
            assert torch.allclose(g, eager_grads[name], atol=1e-5, rtol=1e-4), name
    print("dynamo counters:", {k: dict(v) for k, v in counters.items() if k in ("stats", "frames", "recompiles")})
    assert counters["stats"]["unique_graphs"] == 1 and not counters["recompiles"]
    assert counters["frames"]["ok"] >= 1


@pytest.mark.slow
def test_compiled_training_checkpoint_loads_uncompiled(tmp_path):
    """A run with speed.compile=true writes net.* weights that translate's loader reads."""
    from seq2seq.inference.checkpoint import load_model as load_checkpoint

    torch._dynamo.reset()
    cfg = compose_train(tmp_path, QUICK + ["speed.compile=true", "trainer.max_steps=6", "test=false",
                                           "data.pad_to_multiple=8"])
    torch._dynamo.utils.counters.clear()
    train(cfg)
    # Dynamic shapes: batches of many sizes and lengths, yet one graph (two if a size is 0 or 1).
    print("compiled graphs:", dict(torch._dynamo.utils.counters["stats"]))
    assert 1 <= torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 2
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    state = torch.load(path, weights_only=True)["state_dict"]
    assert all(k.startswith("net.") and "_orig_mod" not in k for k in state)
    net, tokenizer = load_checkpoint(path, torch.device("cpu"))
    module = Seq2SeqModule.load_from_checkpoint(path, map_location="cpu").eval()
    b = padded_batch(vocab=tokenizer.src_vocab_size)
    cfg = DecodingConfig(max_len_a=0.0, max_len_b=10)
    assert greedy_search(net, b["src"], cfg) == greedy_search(module.net, b["src"], cfg)
    # The compiled training function computes what the uncompiled module does with these weights.
    module.setup("fit")
    tgt_index, src_index = target_index(b["tgt_out"], PAD), source_index(b["src"], PAD)
    with torch.no_grad():
        compiled = module._compiled_loss(b["src"], b["tgt_in"], b["tgt_out"], tgt_index, src_index, 0.1, True)
        eager = sequence_loss(net, b["src"], b["tgt_in"], b["tgt_out"], 0.1)
    assert compiled[0].item() == pytest.approx(eager[0].item(), rel=1e-4)

"""Fine-tuning from a Hugging Face transformers Marian folder (init_from=FOLDER, seq2seq.inference.hf_import):
an OPUS-MT-shaped random MarianMTModel (its own sentencepiece models, vocabulary order, decoder start, swish,
output bias) becomes our network and tokenizer with the same function; our own exports come back unchanged;
`python -m seq2seq.train init_from=FOLDER` fine-tunes it and lowers the loss; a folder that does not fit is
one message."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from helpers import TINY_OVERRIDES, run_train
from helpers.hf import LAYOUTS, transformers_or_skip
from helpers.random_models import random_checkpoint, toy_tokenizers
from helpers.random_models import toy_pairs as toy_corpus
from seq2seq.data import toy
from seq2seq.data.tokenizer import Tokenizer
from seq2seq.errors import CheckpointError
from seq2seq.inference.checkpoint import load_model, load_parent
from seq2seq.models.loss import plain_sequence_loss

pytestmark = pytest.mark.filterwarnings("ignore:Recommended. pip install sacremoses")

# The Marian's architecture, as the fine-tuning run must configure it.
MODEL = {"d_model": 64, "num_heads": 4, "num_encoder_layers": 1, "num_decoder_layers": 1, "d_ff": 128,
         "max_positions": 128, "activation": "swish", "output_bias": True, "pre_norm": False,
         "share_embeddings": True, "tie_output": True, "copy_attention": False, "dropout": 0.0,
         "attention_dropout": 0.0}
# What the run adds to TINY_OVERRIDES (which set the sizes) to configure the Marian's architecture.
OVERRIDES = ["model.max_positions=128", "model.activation=swish", "model.output_bias=true", "data.joint_vocab=false"]


@pytest.fixture(scope="session")  # (session: skips before the session's training fixtures)
def hf():
    return transformers_or_skip()


def train_sentencepiece(texts: list[str], size: int) -> bytes:
    """A sentencepiece model with the library's defaults (unk 0, bos 1, eos 2, no pad), as Marian's are."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=model, vocab_size=size,
                                   minloglevel=2, num_threads=1)
    return model.getvalue()


@pytest.fixture(scope="module")
def opus_folder(hf, tmp_path_factory) -> Path:
    """A random MarianMTModel laid out as an OPUS-MT model: its own source and target sentencepiece models
    (trained here on the toy corpus), one vocab.json over both (</s> 0, <unk> 1, the pieces, <pad> last),
    the decoder starting from <pad>, swish, a non-zero final_logits_bias, a zero <pad> embedding; written
    by save_pretrained."""
    import sentencepiece as spm

    folder = tmp_path_factory.mktemp("opus") / "opus-mt-en-de"
    folder.mkdir()
    pairs = toy.generate(seed=1234, sizes={"train": 2000})["train"]
    for name, texts, size in (("source.spm", [en for en, _ in pairs], 150), ("target.spm", [de for _, de in pairs], 180)):
        (folder / name).write_bytes(train_sentencepiece(texts, size))
    sides = [spm.SentencePieceProcessor(model_file=str(folder / name)) for name in ("source.spm", "target.spm")]
    pieces = dict.fromkeys(p.id_to_piece(i) for p in sides for i in range(p.get_piece_size()) if not p.is_control(i)
                           and not p.is_unknown(i))
    vocab = {piece: i for i, piece in enumerate(["</s>", "<unk>", *pieces, "<pad>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    pad = len(vocab) - 1
    config = hf.MarianConfig(
        vocab_size=len(vocab), d_model=MODEL["d_model"], encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=128,
        activation_function="swish", scale_embedding=True, pad_token_id=pad, eos_token_id=0, decoder_start_token_id=pad,
        forced_eos_token_id=0, share_encoder_decoder_embeddings=True, dropout=0.1,
    )
    torch.manual_seed(0)
    model = hf.MarianMTModel(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embed_positions" not in name:
                p.add_(torch.randn_like(p) * 0.1)
        model.model.shared.weight[pad].zero_()
        model.final_logits_bias.normal_()
        model.final_logits_bias[0, pad] = 0.0
    model.save_pretrained(str(folder))
    hf.MarianTokenizer(source_spm=str(folder / "source.spm"), target_spm=str(folder / "target.spm"),
                       vocab=str(folder / "vocab.json"), source_lang="en", target_lang="de").save_pretrained(str(folder))
    return folder


def marian_ids(tokenizer: Tokenizer, vocab: dict[str, int], start: int) -> torch.Tensor:
    """Our id -> the Marian's id (our bos is its decoder start)."""
    ids = [vocab.get(tokenizer.tgt.id_to_piece(i), -1) for i in range(tokenizer.tgt_vocab_size)]
    ids[tokenizer.bos_id] = start
    return torch.tensor(ids)


def test_opus_shaped_marian_imports_with_the_same_function(hf, opus_folder):
    """Tokens, logits and log-probabilities of our imported network equal the Marian's (within 1e-4), on
    every vocabulary entry, for sources and teacher-forced targets of the toy corpus."""
    parent = load_parent(opus_folder, MODEL, {"joint_vocab": False})
    net, tokenizer = parent.net, parent.tokenizer
    model = hf.AutoModelForSeq2SeqLM.from_pretrained(opus_folder).eval()
    hf_tokenizer = hf.AutoTokenizer.from_pretrained(opus_folder)
    vocab = json.loads((opus_folder / "vocab.json").read_text())
    pad = model.config.pad_token_id
    to_marian = marian_ids(tokenizer, vocab, start=pad)
    assert not tokenizer.joint and tokenizer.one_vocabulary and net.config.share_embeddings
    assert tokenizer.tgt_vocab_size == len(vocab) + 1  # pad and bos are both the Marian's <pad>

    pairs = toy.generate(seed=99, sizes={"train": 16})["train"]
    sources, targets = [en for en, _ in pairs], [de for _, de in pairs]
    batch = hf_tokenizer(sources, text_target=targets, padding=True, return_tensors="pt")
    ours_src = [to_marian[ids].tolist() for ids in tokenizer.encode_source(sources)]
    theirs_src = [row[row != pad].tolist() for row in batch["input_ids"]]
    # A character source.spm does not know is <unk> for both segmenters; MarianTokenizer then looks its
    # surface up in the joint vocabulary (where a target piece may have it), we keep <unk>.
    unk = vocab["<unk>"]
    assert [len(t) for t in theirs_src] == [len(o) for o in ours_src]
    assert all(a == b or a == unk for o, t in zip(ours_src, theirs_src) for a, b in zip(o, t))
    ours_tgt = tokenizer.encode_target(targets)
    assert [row[row != pad].tolist() for row in batch["labels"]] == [to_marian[t + [3]].tolist() for t in ours_tgt]

    width_s, width_t = max(map(len, ours_src)), max(map(len, ours_tgt)) + 1
    src = torch.tensor([ids + [0] * (width_s - len(ids)) for ids in tokenizer.encode_source(sources)])
    tgt_in = torch.tensor([[2, *t] + [0] * (width_t - 1 - len(t)) for t in ours_tgt])
    real = tgt_in != 0
    with torch.no_grad():
        ours = net(src, tgt_in)
        theirs = model(input_ids=to_marian[src].masked_fill(src == 0, pad), attention_mask=(src != 0).long(),
                       decoder_input_ids=to_marian[tgt_in].masked_fill(tgt_in == 0, pad)).logits
    # Our logits in the Marian's order: its <pad> is our bos (our pad entry carries the lowered bias).
    back = torch.empty(len(vocab), dtype=torch.long)
    back[to_marian] = torch.arange(len(to_marian))
    back[pad] = tokenizer.bos_id
    ours_in_marian_order = ours[..., back]
    logit_gap = float((ours_in_marian_order - theirs)[real].abs().max())
    log_prob_gap = float((ours.log_softmax(-1)[..., back] - theirs.log_softmax(-1))[real].abs().max())
    print(f"\nimported OPUS-shaped Marian: max |logit difference| {logit_gap:.2e}, "
          f"max |log-prob difference| {log_prob_gap:.2e}")
    assert logit_gap < 1e-4 and log_prob_gap < 1e-4
    known = [t for t in ours_tgt if tokenizer.unk_id not in t]  # (<unk>: our " ⁇ ", MarianTokenizer's nothing)
    assert len(known) >= len(ours_tgt) // 2
    assert tokenizer.decode_target(known) == hf_tokenizer.batch_decode([to_marian[t].tolist() for t in known],
                                                                      skip_special_tokens=True)


@pytest.mark.parametrize("layout", ["post-LN relu, shared + tied", "pre-LN, shared, own output matrix",
                                    "post-LN, separate vocabularies, untied", "post-LN swish, output bias (OPUS-MT's)"])
def test_our_export_comes_back_unchanged(layout, hf, tmp_path):
    """Export then import: the same tokenizer (piece for piece), config and function (within 1e-4)."""
    from seq2seq.inference.hf_export import export_transformers

    joint, settings, _ = LAYOUTS[layout]
    en, de = [p[0] for p in toy_corpus()], [p[1] for p in toy_corpus()]
    tokenizer = toy_tokenizers()[joint]
    ckpt = random_checkpoint(tmp_path / "model.ckpt", tokenizer, **settings)
    net, _ = load_model(ckpt)
    folder = export_transformers(ckpt, tmp_path / "hf")
    model = {k: v for k, v in net.config.__dict__.items() if not k.endswith(("vocab_size", "_id"))}
    parent = load_parent(folder, model, {"joint_vocab": joint == "joint"})
    assert parent.tokenizer.difference(tokenizer) is None
    assert parent.net.config == net.config
    src = torch.tensor(tokenizer.encode_source(en[:1]))
    tgt_in = torch.tensor([[2, *tokenizer.encode_target(de[:1])[0]]])
    with torch.no_grad():
        assert float((parent.net(src, tgt_in) - net(src, tgt_in)).abs().max()) < 1e-4


def test_a_folder_that_does_not_fit_is_one_message(opus_folder, tmp_path):
    """The run's config is checked against the Marian's (every key to set, in one message); a folder that
    is not a Marian model, or lacks its tokenizer, is named with what is missing."""
    with pytest.raises(CheckpointError) as info:
        load_parent(opus_folder, {**MODEL, "d_model": 128, "activation": "relu", "output_bias": False},
                    {"joint_vocab": True})
    message = str(info.value)
    assert "\n" not in message
    for fix in ("model.d_model=64", "model.activation=swish", "model.output_bias=true", "data.joint_vocab=false"):
        assert fix in message
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_parent(empty, MODEL)
    (empty / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="'bert' model"):
        load_parent(empty, MODEL)


def validation_loss(net, tokenizer: Tokenizer, pairs: list[tuple[str, str]]) -> float:
    """Teacher-forced NLL per target token (EOS included) of ``pairs``."""
    sources, targets = tokenizer.encode_source([s for s, _ in pairs]), tokenizer.encode_target([t for _, t in pairs])
    src = torch.nn.utils.rnn.pad_sequence([torch.tensor(s) for s in sources], batch_first=True)
    tgt_out = torch.nn.utils.rnn.pad_sequence([torch.tensor(t + [3]) for t in targets], batch_first=True)
    tgt_in = torch.nn.utils.rnn.pad_sequence([torch.tensor([2, *t]) for t in targets], batch_first=True)
    with torch.no_grad():
        _, nll = plain_sequence_loss(net.eval(), src, tgt_in, tgt_out)
    return float(nll) / int((tgt_out != 0).sum())


@pytest.fixture(scope="module")
def fine_tuned(opus_folder, tmp_path_factory) -> dict:
    """`python -m seq2seq.train init_from=FOLDER` with the Marian's architecture, 60 steps: the run folder
    and its arguments."""
    tmp = tmp_path_factory.mktemp("fine_tuned")
    args = [*TINY_OVERRIDES, *OVERRIDES, f"init_from={opus_folder}", "trainer.max_steps=60", "optim.lr=3e-3",
            "optim.warmup_steps=10", "hydra.run.dir=run"]
    result = run_train(args, tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"cwd": tmp, "run": tmp / "run", "args": args}


def test_fine_tuning_a_marian_folder_through_train_lowers_the_loss(opus_folder, fine_tuned):
    """The run trains the imported network with its tokenizer (no sentencepiece training), records its
    parent, and the validation loss falls."""
    run = fine_tuned["run"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["init_from"]["path"] == str(opus_folder.resolve()) and metrics["init_from"]["global_step"] == 0
    parent = load_parent(opus_folder, MODEL, {"joint_vocab": False})
    child, child_tokenizer = load_model(run / "checkpoints" / "best.ckpt")
    assert child_tokenizer.difference(parent.tokenizer) is None
    [data] = {p.parent for p in fine_tuned["cwd"].rglob("val.en")}
    val = list(zip((data / "val.en").read_text().splitlines(), (data / "val.de").read_text().splitlines()))
    before, after = validation_loss(parent.net, parent.tokenizer, val), validation_loss(child, child_tokenizer, val)
    print(f"\nfine-tuning the imported Marian for 60 steps: validation NLL per token {before:.3f} -> {after:.3f}")
    assert after < before - 0.5


def test_resuming_a_run_fine_tuned_from_a_marian_keeps_its_shared_embeddings(opus_folder, fine_tuned):
    """ckpt_path=last resumes the child to step 70 with the Marian's shared embeddings (two segmenters, one
    vocabulary) and keeps its parent in metrics.json."""
    args = [a for a in fine_tuned["args"] if not a.startswith(("init_from=", "trainer.max_steps="))]
    resumed = run_train([*args, "ckpt_path=last", "trainer.max_steps=70"], fine_tuned["cwd"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    last, _ = load_model(fine_tuned["run"] / "checkpoints" / "last.ckpt")
    assert last.config.share_embeddings and last.encoder.embed is last.decoder.embed
    metrics = json.loads((fine_tuned["run"] / "metrics.json").read_text())
    assert metrics["init_from"]["path"] == str(opus_folder.resolve())
    assert torch.load(fine_tuned["run"] / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 70

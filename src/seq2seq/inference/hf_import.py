"""Read a Hugging Face transformers Marian folder as the parent of a fine-tuning run (``init_from=FOLDER``).

A folder as ``MarianMTModel``/``MarianTokenizer.save_pretrained`` write it (an OPUS-MT model, or one
of our transformers exports, Marian or Pegasus) becomes what
:func:`seq2seq.inference.checkpoint.load_parent` reads from a training checkpoint, without
downloading anything; docs/huggingface.md tells the details. The weights go through
:func:`seq2seq.inference.hf_export.from_transformers`; ``final_logits_bias`` becomes ``output_bias``.

Our special ids are fixed (pad 0, unk 1, bos 2, eos 3), so the vocabulary is renumbered: the model's
pad, unk, decoder start and eos tokens, then its other entries in their order (embedding and output
rows follow). When the decoder starts from the pad token (OPUS-MT), our pad and bos rows are both
that row and our pad entry's output bias is lowered by :data:`DUPLICATE_PAD_BIAS`, so that the
softmax's sum, and our log-probabilities, stay the model's. ``source.spm``/``target.spm`` are
rewritten with our ids (each side's own pieces keep their scores, the others are unused).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from seq2seq.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer
from seq2seq.errors import CheckpointError, Seq2SeqError
from seq2seq.inference.hf_export import from_transformers, quiet_progress, require_transformers
from seq2seq.models.transformer import ACTIVATIONS, TransformerConfig

# Added to our pad entry's output bias when the model's decoder starts from its pad token (see the
# module docstring): exp(-100) is nothing beside any real logit.
DUPLICATE_PAD_BIAS = -100.0
FAMILIES = {"marian": False, "pegasus": True}  # model_type -> our pre_norm
# transformers' activation names -> ours (the same names, and silu for swish).
ACTIVATION_NAMES = {**{name: name for name in ACTIVATIONS}, "silu": "swish"}


def _read_json(path: Path, folder: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError:
        raise CheckpointError(f"init_from={folder}: {path.name} is missing; a transformers Marian folder holds "
                              "config.json, the weights, source.spm, target.spm and vocab.json") from None
    except ValueError as err:
        raise CheckpointError(f"init_from={folder}: {path.name} is not valid JSON ({err})") from None


def network_config(config: Any, folder: Path, src_vocab: int, tgt_vocab: int, output_bias: bool) -> TransformerConfig:
    """Our :class:`TransformerConfig` of a Marian (or Pegasus) config, or one message saying what differs."""
    def refuse(what: str) -> CheckpointError:
        return CheckpointError(f"init_from={folder}: {what}, which the seq2seq Transformer cannot compute")

    if not config.scale_embedding:
        raise refuse("its embeddings are not scaled by sqrt(d_model) (scale_embedding=false)")
    if config.encoder_attention_heads != config.decoder_attention_heads:
        raise refuse(f"its encoder has {config.encoder_attention_heads} attention heads and its decoder "
                     f"{config.decoder_attention_heads}")
    if config.encoder_ffn_dim != config.decoder_ffn_dim:
        raise refuse(f"its encoder's feed-forward width is {config.encoder_ffn_dim} and its decoder's "
                     f"{config.decoder_ffn_dim}")
    if config.activation_function not in ACTIVATION_NAMES:
        raise refuse(f"its activation is {config.activation_function} (ours: {', '.join(ACTIVATIONS)})")
    share = bool(getattr(config, "share_encoder_decoder_embeddings", True))
    try:
        return TransformerConfig(
            src_vocab_size=src_vocab, tgt_vocab_size=tgt_vocab, d_model=config.d_model,
            num_heads=config.encoder_attention_heads, num_encoder_layers=config.encoder_layers,
            num_decoder_layers=config.decoder_layers, d_ff=config.encoder_ffn_dim, dropout=float(config.dropout),
            attention_dropout=float(config.attention_dropout),
            activation=ACTIVATION_NAMES[config.activation_function], max_positions=config.max_position_embeddings,
            pre_norm=FAMILIES[config.model_type], share_embeddings=share,
            tie_output=bool(getattr(config, "tie_word_embeddings", True)), output_bias=output_bias,
            pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID,
        )
    except Seq2SeqError as err:
        raise refuse(str(err)) from None


def renumbering(vocab: dict[str, int], size: int, special: dict[str, int], folder: Path) -> tuple[list[str], list[int]]:
    """``(pieces, index)``: our id -> piece and our id -> the model's id, for a vocabulary (piece -> the
    model's id) of ``size`` entries whose pad, unk, bos (the decoder's start) and eos ids are ``special``."""
    pieces = {i: piece for piece, i in vocab.items()}
    if sorted(pieces) != list(range(size)):
        raise CheckpointError(f"init_from={folder}: its vocabulary has {len(vocab)} entries with ids that do not "
                              f"cover 0..{size - 1} once each (the model's vocabulary size)")
    index = [special[name] for name in ("pad", "unk", "bos", "eos")]
    taken = set(index)
    index += [i for i in range(size) if i not in taken]
    ours = [pieces[i] for i in index]
    if special["bos"] == special["pad"]:
        ours[BOS_ID] = next(name for name in ("<s>", "<bos>", "<seq2seq_bos>") if name not in vocab)
    return ours, index


def sentencepiece_model(model_file: Path, pieces: list[str]) -> bytes:
    """``model_file`` rewritten with ``pieces`` as its vocabulary, in that order (see the module docstring)."""
    from sentencepiece import sentencepiece_model_pb2 as model_pb2

    Type = model_pb2.ModelProto.SentencePiece.Type
    original = model_pb2.ModelProto()
    original.ParseFromString(model_file.read_bytes())
    spec = original.trainer_spec
    if [p.piece for p in original.pieces] == pieces and (spec.pad_id, spec.unk_id, spec.bos_id, spec.eos_id) == (
            PAD_ID, UNK_ID, BOS_ID, EOS_ID):
        return model_file.read_bytes()  # already ours (a seq2seq export): unchanged
    own = {p.piece: p for p in original.pieces}
    model = model_pb2.ModelProto()
    model.CopyFrom(original)
    del model.pieces[:]
    special_types = {PAD_ID: Type.CONTROL, UNK_ID: Type.UNKNOWN, BOS_ID: Type.CONTROL, EOS_ID: Type.CONTROL}
    for i, piece in enumerate(pieces):
        entry = model.pieces.add()
        entry.piece = piece
        if i in special_types:
            entry.type, entry.score = special_types[i], 0.0
        elif piece in own and own[piece].type in (Type.NORMAL, Type.USER_DEFINED, Type.BYTE):
            entry.type, entry.score = own[piece].type, own[piece].score
        else:  # another side's piece, or a control symbol of this one: an id, never produced by encoding
            entry.type, entry.score = Type.UNUSED, 0.0
    spec = model.trainer_spec
    spec.pad_id, spec.unk_id, spec.bos_id, spec.eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID
    spec.pad_piece, spec.unk_piece, spec.bos_piece, spec.eos_piece = pieces[PAD_ID], pieces[UNK_ID], pieces[BOS_ID], pieces[EOS_ID]
    spec.vocab_size = len(pieces)
    return model.SerializeToString()


def read_transformers_folder(path: str | Path) -> dict[str, Any]:
    """A transformers Marian (or Pegasus) folder as the content of a training checkpoint: ``state_dict``
    (``net.*``), ``model_config``, ``tokenizer``, ``global_step`` 0, no ``best_scores``. One
    :class:`CheckpointError` for a folder that is not one, or holds a model we cannot compute."""
    folder = Path(path).expanduser()
    config_json = _read_json(folder / "config.json", folder)
    model_type = config_json.get("model_type") if isinstance(config_json, dict) else None
    if model_type not in FAMILIES:
        raise CheckpointError(f"init_from={folder}: its config.json describes a {model_type!r} model; init_from "
                              f"takes a seq2seq checkpoint or a transformers Marian folder ({', '.join(FAMILIES)})")
    tokenizer_config = _read_json(folder / "tokenizer_config.json", folder) if (folder / "tokenizer_config.json").is_file() else {}
    for name in ("source.spm", "target.spm"):
        if not (folder / name).is_file():
            raise CheckpointError(f"init_from={folder}: {name} is missing; the folder needs MarianTokenizer's files "
                                  "(source.spm, target.spm, vocab.json)")
    transformers = require_transformers()
    try:
        config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
        with quiet_progress(transformers):
            model = transformers.AutoModelForSeq2SeqLM.from_pretrained(str(folder), local_files_only=True).float()
    except (OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"init_from={folder}: transformers cannot read it ({type(err).__name__}: "
                              f"{str(err).strip().splitlines()[0][:200] if str(err).strip() else ''})") from None
    state = {k: v.detach() for k, v in model.state_dict().items()}
    separate_vocabs = bool(tokenizer_config.get("separate_vocabs", False))
    share = bool(getattr(config, "share_encoder_decoder_embeddings", True))
    if share == separate_vocabs:
        raise CheckpointError(f"init_from={folder}: its model {'shares' if share else 'does not share'} the source and "
                              f"target embeddings but its tokenizer has {'separate' if separate_vocabs else 'one'} "
                              "vocabulary; the folder does not fit together")
    src_vocab = _read_json(folder / "vocab.json", folder)
    tgt_vocab = _read_json(folder / "target_vocab.json", folder) if separate_vocabs else src_vocab
    tgt_size = getattr(config, "decoder_vocab_size", None) or config.vocab_size

    def special(vocab: dict[str, int], side: str) -> dict[str, int]:
        by_id = {i: piece for piece, i in vocab.items()}
        ids = {"pad": config.pad_token_id, "eos": config.eos_token_id, "bos": config.decoder_start_token_id}
        if side == "source":  # the same tokens, by name, in the source vocabulary
            target_ids = {i: piece for piece, i in tgt_vocab.items()}
            ids = {k: vocab.get(target_ids.get(v), v) for k, v in ids.items()}
        ids["unk"] = vocab.get(str(tokenizer_config.get("unk_token") or "<unk>"), -1)
        missing = [k for k, v in ids.items() if v not in by_id]
        if missing:
            raise CheckpointError(f"init_from={folder}: the {side} vocabulary has no {', '.join(missing)} token")
        return ids

    tgt_pieces, tgt_index = renumbering(tgt_vocab, tgt_size, special(tgt_vocab, "target"), folder)
    if separate_vocabs:
        src_pieces, src_index = renumbering(src_vocab, config.vocab_size, special(src_vocab, "source"), folder)
    else:
        src_pieces, src_index = tgt_pieces, tgt_index
    bias = state.get("final_logits_bias", torch.zeros(1, tgt_size)).reshape(-1).index_select(0, torch.tensor(tgt_index))
    start_is_pad = config.decoder_start_token_id == config.pad_token_id
    cfg = network_config(config, folder, len(src_pieces), len(tgt_pieces), bool(bias.any()) or start_is_pad)

    # Renumber the vocabulary rows in transformers' names, then map the rest of the network.
    src_rows, tgt_rows = torch.tensor(src_index), torch.tensor(tgt_index)
    renumbered = dict(state)
    for name, tensor in state.items():
        if name.endswith("embed_tokens.weight") or name in ("model.shared.weight", "lm_head.weight"):
            rows = src_rows if (name.startswith("model.encoder") or (name == "model.shared.weight" and share)) else tgt_rows
            renumbered[name] = tensor.index_select(0, rows)
    if start_is_pad:
        bias[PAD_ID] += DUPLICATE_PAD_BIAS
    renumbered["final_logits_bias"] = bias.unsqueeze(0)
    weights = from_transformers(renumbered, cfg)

    src_model = sentencepiece_model(folder / "source.spm", src_pieces)
    tgt_model = sentencepiece_model(folder / "target.spm", tgt_pieces)
    joint = not separate_vocabs and src_model == tgt_model
    tokenizer = Tokenizer(src_model, None if joint else tgt_model)
    return {
        "state_dict": {f"net.{k}": v for k, v in weights.items()},
        "model_config": dict(cfg.__dict__),
        "tokenizer": tokenizer.state_dict(),
        "global_step": 0,
        "best_scores": {},
        "transformers_folder": str(folder.resolve()),
    }

"""Export a checkpoint to CTranslate2 (``seq2seq-export format=ctranslate2``).

The conversion builds CTranslate2's own model description (``ctranslate2.specs.TransformerSpec``)
from our :class:`~seq2seq.models.transformer.Seq2SeqTransformer` and lets CTranslate2 check,
quantize and write it (docs/export-and-serve.md). What differs in convention is set explicitly:
our position table (interleaved sines and cosines from position 0) is written into the model,
CTranslate2's fused QKV and KV rows are ours, the vocabulary is the pieces of our ids (unique,
checked), and the model appends the EOS our encoder expects (``add_source_eos``). What it has no
counterpart for is refused, all of it in one message (:func:`check_exportable`).

int8 weights (``quantization=int8*``) are rounded to 7 bits by default (``int8_weight_bits=7``:
[-63, 63], one scale per output row) rather than CTranslate2's 8: on a CPU without VNNI, oneDNN
sums pairs of (unsigned 8-bit activation x int8 weight) products in 16 bits, which saturate with
8-bit weights (255 x 127 x 2 > 32,767). 7 bits compute the same on every x86 CPU
(docs/results/int8_isa_cpu/; ``benchmarks/int8_isa.py``).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from seq2seq.data.tokenizer import Tokenizer
from seq2seq.errors import ConfigError
from seq2seq.inference.checkpoint import build_model, read_checkpoint
from seq2seq.inference.model_card import model_card, run_folder
from seq2seq.models.transformer import Seq2SeqTransformer, TransformerConfig, sinusoidal_positions

EXPORT_INFO = "seq2seq_export.json"
JOINT_SPM, SOURCE_SPM, TARGET_SPM = "sentencepiece.model", "source.spm.model", "target.spm.model"
LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, which every norm of ours uses


def require_ctranslate2():
    """The ``ctranslate2`` module, or one message saying which extra installs it."""
    try:
        import ctranslate2
        import ctranslate2.specs  # noqa: F401 - the spec API is what the export uses
    except ImportError:
        raise ConfigError(
            "exporting to or translating with CTranslate2 needs the ctranslate2 package: "
            "pip install 'seq2seq[export]' (or pip install ctranslate2)"
        ) from None
    return ctranslate2


def quantizations() -> tuple[str, ...]:
    """The weight types CTranslate2 can write (``quantization=``), besides null (float32 as trained)."""
    require_ctranslate2()
    from ctranslate2.specs.model_spec import ACCEPTED_MODEL_TYPES

    return tuple(ACCEPTED_MODEL_TYPES)


def quantize(spec, quantization: str | None, int8_weight_bits: int = 7) -> None:
    """``spec.optimize(quantization)`` (CTranslate2 aliases equal variables and converts the weights),
    with int8 weights rounded to ``int8_weight_bits`` bits (7: no oneDNN saturation without VNNI;
    see the module docstring) from the float32 values, one scale per output row as CTranslate2's."""
    import numpy as np
    from ctranslate2.specs import model_spec

    if int8_weight_bits not in (7, 8):
        raise ConfigError(f"int8_weight_bits={int8_weight_bits!r}: use 7 (every CPU computes the same) or 8")
    originals: dict[str, Any] = {}
    if quantization and quantization.startswith("int8") and int8_weight_bits != 8:
        def keep(layer, name, value):
            key = name.split("/")[-1]
            if isinstance(value, model_spec.Variable) and hasattr(layer, f"{key}_scale") and not value.is_scalar():
                originals[name] = value.to("float32").numpy().copy()

        model_spec.visit_spec(spec, keep)
    spec.optimize(quantization=quantization)
    levels = np.float32(2 ** (int8_weight_bits - 1) - 1)

    def requantize(layer, name, value):
        weights = originals.get(name)
        if weights is None or not isinstance(value, model_spec.Variable) or value.dtype != "int8":
            return
        key = name.split("/")[-1]
        amax = np.maximum(np.abs(weights).max(axis=1), levels / np.finfo(np.float32).max)
        scale = (levels / amax).astype(np.float32)
        setattr(layer, key, model_spec.NumpyVariable(np.rint(weights * scale[:, None]).astype(np.int8)))
        setattr(layer, f"{key}_scale", model_spec.NumpyVariable(scale).to(getattr(layer, f"{key}_scale").dtype))

    if originals:
        model_spec.visit_spec(spec, requantize)


# ------------------------------------------------------------------------------------ the spec
def _array(tensor):
    """A float32 numpy copy of a parameter or buffer."""
    return tensor.detach().float().cpu().numpy().copy()


def _linear(spec, module) -> None:
    spec.weight = _array(module.weight)
    if module.bias is not None:
        spec.bias = _array(module.bias)


def _norm(spec, module) -> None:
    spec.gamma = _array(module.weight)
    spec.beta = _array(module.bias)


def _ffn(spec, block, ffn) -> None:
    _norm(spec.layer_norm, block.norm)
    _linear(spec.linear_0, ffn.fc1)
    _linear(spec.linear_1, ffn.fc2)


def _attention(spec, block, *projections) -> None:
    """A self-attention (fused QKV, output) or cross-attention (query, fused KV, output) sublayer:
    our fused projections' rows ([q; k; v], [k; v], heads contiguous) are CTranslate2's layout."""
    _norm(spec.layer_norm, block.norm)
    for target, module in zip(spec.linear, projections):
        _linear(target, module)


def _inputs(spec, stack, embeddings_spec) -> None:
    """Token embeddings, our position table and the sqrt(d_model) scale of a stack."""
    cfg = stack.config
    embeddings_spec.weight = _array(stack.embed.tokens.weight)
    spec.scale_embeddings = True  # multiply by sqrt(d_model), as Embedding.forward does
    spec.position_encodings.encodings = _array(sinusoidal_positions(cfg.max_positions, cfg.d_model))
    if cfg.pre_norm:
        _norm(spec.layer_norm, stack.final_norm)


def special_pieces(tokenizer: Tokenizer, net: Seq2SeqTransformer) -> dict[str, str]:
    """The strings of unk/bos/eos/pad, the same on both sides (CTranslate2 names them once)."""
    cfg = net.config
    ids = {"unk": tokenizer.unk_id, "bos": cfg.bos_id, "eos": cfg.eos_id, "pad": cfg.pad_id}
    pieces = {}
    for name, i in ids.items():
        src, tgt = tokenizer.src.id_to_piece(i), tokenizer.tgt.id_to_piece(i)
        if src != tgt:
            raise ConfigError(f"the source and target tokenizers name {name} (id {i}) differently "
                              f"({src!r}, {tgt!r}); CTranslate2 needs one string per special token")
        pieces[name] = tgt
    return pieces


def vocabulary(processor, side: str, size: int, needs: str = "CTranslate2") -> list[str]:
    """The pieces of ids 0..size-1 of a sentencepiece processor (CTranslate2's vocabulary), checked
    unique (``needs``: who needs them so, for the message)."""
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    if len(pieces) != size:
        raise ConfigError(f"the {side} tokenizer has {len(pieces)} pieces but the model's {side} vocabulary "
                          f"{size}; the checkpoint does not fit together")
    if len(set(pieces)) != len(pieces):
        raise ConfigError(f"the {side} tokenizer has repeated pieces; {needs} needs unique token strings")
    return pieces


# What the exports (this one and hf_export) map of each TransformerConfig field: the values they can
# write (None: any).
MAPPED = {"activation": ("relu", "gelu", "swish"), **dict.fromkeys((
    "src_vocab_size", "tgt_vocab_size", "d_model", "num_heads", "num_encoder_layers", "num_decoder_layers", "d_ff",
    "dropout", "attention_dropout", "max_positions", "pre_norm", "share_embeddings", "tie_output", "pad_id",
    "bos_id", "eos_id", "output_bias"))}


def check_exportable(cfg: TransformerConfig, mapped: dict = MAPPED, target: str = "CTranslate2",
                     copy_reason: str = "CTranslate2 has no layer for") -> None:
    """Raise one :class:`ConfigError` naming every setting of ``cfg`` that ``target`` cannot run: a
    value ``mapped`` does not list, or a field it does not know (a model variant) set to anything but
    its default (the paper's, which is what the export writes)."""
    refused = [f"copy attention (a pointer-generator head mixing the vocabulary softmax with copies of source "
               f"tokens), which {copy_reason}" if name == "copy_attention"
               else f"{name}={value!r} (the export maps {', '.join(map(repr, allowed))})"
               for name, value, allowed in cfg.settings_outside(mapped)]
    if refused:
        raise ConfigError(f"this checkpoint has {'; '.join(refused)}: it cannot be exported to {target}")


def build_spec(net: Seq2SeqTransformer, tokenizer: Tokenizer):
    """CTranslate2's ``TransformerSpec`` of ``net`` with its vocabularies and special tokens, validated."""
    require_ctranslate2()
    from ctranslate2.specs import common_spec, transformer_spec

    cfg = net.config
    check_exportable(cfg)
    activation = {"relu": common_spec.Activation.RELU, "gelu": common_spec.Activation.GELU,
                  "swish": common_spec.Activation.SWISH}[cfg.activation]
    encoder = transformer_spec.TransformerEncoderSpec(
        cfg.num_encoder_layers, cfg.num_heads, pre_norm=cfg.pre_norm, activation=activation
    )
    decoder = transformer_spec.TransformerDecoderSpec(
        cfg.num_decoder_layers, cfg.num_heads, pre_norm=cfg.pre_norm, activation=activation
    )
    spec = transformer_spec.TransformerSpec(encoder, decoder)

    _inputs(encoder, net.encoder, encoder.embeddings[0])
    for layer_spec, layer in zip(encoder.layer, net.encoder.layers):
        _attention(layer_spec.self_attention, layer.attn_block, layer.self_attn.qkv_proj, layer.self_attn.out_proj)
        _ffn(layer_spec.ffn, layer.ffn_block, layer.ffn)
    _inputs(decoder, net.decoder, decoder.embeddings)
    for layer_spec, layer in zip(decoder.layer, net.decoder.layers):
        _attention(layer_spec.self_attention, layer.self_block, layer.self_attn.qkv_proj, layer.self_attn.out_proj)
        cross = layer.cross_attn
        _attention(layer_spec.attention, layer.cross_block, cross.q_proj, cross.kv_proj, cross.out_proj)
        _ffn(layer_spec.ffn, layer.ffn_block, layer.ffn)
    _linear(decoder.projection, net.decoder.output)  # the tied (or own) output matrix, and its bias if any

    special = special_pieces(tokenizer, net)
    spec.register_source_vocabulary(vocabulary(tokenizer.src, "source", cfg.src_vocab_size))
    spec.register_target_vocabulary(vocabulary(tokenizer.tgt, "target", cfg.tgt_vocab_size))
    config = spec.config
    config.unk_token, config.bos_token, config.eos_token = special["unk"], special["bos"], special["eos"]
    config.decoder_start_token = special["bos"]
    config.add_source_bos = False
    config.add_source_eos = True  # our encoder input ends with EOS (Tokenizer.encode_source)
    config.layer_norm_epsilon = LAYER_NORM_EPS
    spec.validate()
    return spec


# ------------------------------------------------------------------------------- the folder
def check_output_dir(output_dir: str | Path | None, force: bool) -> Path:
    """The output folder, checked before any work: absent, empty, or (``force``) to be replaced."""
    if output_dir is None or str(output_dir).strip() == "":
        raise ConfigError("no output folder given: pass output_dir=DIR")
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"output_dir={path} is a file; name a folder to write the exported model to")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise ConfigError(f"output_dir={path} exists and is not empty; choose another folder or pass force=true "
                          "to replace it")
    return path


def source_info(ckpt_path: str | Path, checkpoint: dict, net: Seq2SeqTransformer, run: Path | None) -> dict[str, Any]:
    """What every export's ``seq2seq_export.json`` records of where the model came from."""
    return {"checkpoint": str(Path(ckpt_path).resolve()), "global_step": checkpoint.get("global_step"),
            "run_dir": str(run) if run else None, "model_config": dict(checkpoint["model_config"]),
            "num_parameters": net.num_parameters()}


def write_export(output: Path, info: dict[str, Any], run: Path | None, license: str | None,
                 write: Callable[[Path], None]) -> Path:
    """The format's files (``write(folder)``), ``info`` as ``seq2seq_export.json`` and the model card,
    written to a temporary folder beside ``output`` that replaces it when all is written (a previous
    folder there is removed only then) and is deleted on an error."""
    card = model_card(info, run, license=license)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as err:
        raise ConfigError(f"cannot write output_dir={output}: {err.strerror or err}") from None
    try:
        write(tmp)
        (tmp / EXPORT_INFO).write_text(json.dumps(info, indent=2, default=str) + "\n")
        (tmp / "README.md").write_text(card)
        old = None
        if output.exists():
            old = output.with_name(f".{output.name}.{os.getpid()}.{secrets.token_hex(4)}.old")
            os.replace(output, old)
        os.replace(tmp, output)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output


def export_ctranslate2(
    ckpt_path: str | Path | None,
    output_dir: str | Path | None,
    quantization: str | None = None,
    *,
    force: bool = False,
    license: str | None = None,
    on_spec: Callable[[Any], None] | None = None,
    int8_weight_bits: int = 7,
) -> Path:
    """Export a checkpoint to a CTranslate2 model folder; returns the folder.

    ``quantization``: null (float32 weights, as trained) or a CTranslate2 weight type (``int8``,
    ``int8_float32``, ``int16``, ``float16`` ...); ``int8_weight_bits`` (7 or 8) the precision of int8
    weights (see the module docstring). ``force`` replaces a non-empty ``output_dir``.
    ``license`` goes into the model card (``other`` when not given). ``on_spec`` (tests) sees the
    spec before it is written. User errors raise :class:`~seq2seq.errors.Seq2SeqError` before
    anything is written.
    """
    ctranslate2 = require_ctranslate2()
    if quantization is not None and quantization not in quantizations():
        raise ConfigError(f"quantization={quantization!r}: use null (float32) or one of {', '.join(quantizations())}")
    output = check_output_dir(output_dir, force)
    checkpoint = read_checkpoint(ckpt_path)
    net, tokenizer = build_model(checkpoint, ckpt_path)
    spec = build_spec(net, tokenizer)
    quantize(spec, quantization, int8_weight_bits)
    if on_spec is not None:
        on_spec(spec)
    state = tokenizer.state_dict()
    # The sentencepiece model file(s) written beside the model: one when joint, else one per side.
    files = {JOINT_SPM: state["src_model"]} if tokenizer.joint else {SOURCE_SPM: state["src_model"],
                                                                      TARGET_SPM: state["tgt_model"]}
    run = run_folder(ckpt_path)
    info = {
        "name": output.name,
        "format": "ctranslate2",
        "ctranslate2_version": ctranslate2.__version__,
        "quantization": quantization,
        "int8_weight_bits": int8_weight_bits if quantization and quantization.startswith("int8") else None,
        **source_info(ckpt_path, checkpoint, net, run),
        "tokenizer": {"source": list(files)[0], "target": list(files)[-1]},
        "special_tokens": special_pieces(tokenizer, net),
        "source_eos": "added by the model (config.json: add_source_eos)",
        "decoding": (checkpoint.get("hyper_parameters") or {}).get("decoding"),
    }

    def write(folder: Path) -> None:
        spec.save(str(folder))
        for name, data in files.items():
            (folder / name).write_bytes(data)

    return write_export(output, info, run, license, write)

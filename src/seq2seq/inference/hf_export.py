"""Export a checkpoint to Hugging Face transformers (``seq2seq-export format=transformers``).

Post-LN networks are written as ``MarianMTModel``, pre-LN ones as ``PegasusForConditionalGeneration``
(one vocabulary only), with a ``MarianTokenizer`` over our sentencepiece model(s) in our ids and a
``generation_config.json`` from the export's ``decoding=`` settings; docs/huggingface.md tells the
details. transformers computes its own sinusoid tables, with sines in the first half of the vector
and cosines in the second where ours interleave them. The two differ by a permutation of the model
dimensions, with which every operation on the residual stream commutes, so the network is written
in that permuted basis (:func:`residual_order`, :func:`weight_map`). transformers divides a
hypothesis' log-probability by ``n ** length_penalty`` where GNMT divides by ``((5 + n) / 6) **
alpha``: :func:`length_penalty` gives the exponent with the same slope in ``log n`` at a typical length.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch

from seq2seq.data.tokenizer import Tokenizer
from seq2seq.decoding.search import DecodingConfig
from seq2seq.errors import ConfigError
from seq2seq.inference import ct2_export
from seq2seq.inference.checkpoint import build_model, read_checkpoint
from seq2seq.inference.ct2_export import MAPPED, check_output_dir, source_info, write_export
from seq2seq.inference.model_card import read_run, run_folder
from seq2seq.models.transformer import Seq2SeqTransformer, TransformerConfig

SOURCE_SPM, TARGET_SPM, VOCAB, TARGET_VOCAB = "source.spm", "target.spm", "vocab.json", "target_vocab.json"
# The output length (tokens, EOS included) at which length_penalty matches GNMT's alpha: a typical
# sentence of a translation corpus in subwords (WMT14 en-de averages ~28 with a 32k vocabulary).
TYPICAL_OUTPUT_LENGTH = 20
# The decoding strategies generation_config.json can express (the others are refused).
MAPPED_STRATEGIES = ("greedy", "beam", "sampling")


def require_transformers():
    """The ``transformers`` module, or one message saying which extra installs it."""
    try:
        import transformers
    except ImportError:
        raise ConfigError(
            "exporting to or importing from Hugging Face transformers needs the transformers package: "
            "pip install 'seq2seq[transformers]' (or pip install transformers sentencepiece)"
        ) from None
    return transformers


# ------------------------------------------------------------------------------ the weights
def residual_order(d_model: int) -> torch.Tensor:
    """``order`` (D,) such that ``vector[..., order]`` is a residual-stream vector of ours in
    transformers' basis: its first half our sine dimensions (0, 2, 4, ...), its second half our
    cosine dimensions (1, 3, 5, ...). ``torch.argsort(order)`` goes back."""
    return torch.cat([torch.arange(0, d_model, 2), torch.arange(1, d_model, 2)])


def check_exportable(cfg: TransformerConfig) -> None:
    """Raise :class:`ConfigError` for a network no transformers class computes."""
    ct2_export.check_exportable(cfg, MAPPED, "transformers", "no transformers model class has")
    if cfg.pre_norm and not cfg.share_embeddings:
        raise ConfigError(
            "this pre-LN checkpoint has separate source and target vocabularies; transformers' pre-LN "
            "encoder-decoder with sinusoidal positions (Pegasus) has one shared vocabulary, so it cannot be "
            "exported (post-LN models with separate vocabularies export as Marian)"
        )


def weight_map(cfg: TransformerConfig) -> list[tuple[str, list[str], str, bool]]:
    """``(our weight, its transformers names, side, fused)`` of every weight (the map both ways).

    ``side``: how the residual stream enters the tensor: ``in`` (a matrix reading it: columns
    permuted), ``out`` (a matrix, bias or norm writing it: rows permuted), ``none`` (neither). A
    ``fused`` tensor (a QKV or KV projection) is its transformers parts stacked by rows; any other is
    written under each of its names (shared and tied embeddings)."""
    names: list[tuple[str, list[str], str, bool]] = []

    def linear(ours: str, theirs: str, side: str, parts: str = "") -> None:
        split = [f"{theirs}.{p}_proj" for p in parts] or [theirs]
        names.append((f"{ours}.weight", [f"{t}.weight" for t in split], side, bool(parts)))
        names.append((f"{ours}.bias", [f"{t}.bias" for t in split], "out" if side == "out" else "none", bool(parts)))

    def norm(ours: str, theirs: str) -> None:
        names.append((f"{ours}.weight", [f"{theirs}.weight"], "out", False))
        names.append((f"{ours}.bias", [f"{theirs}.bias"], "out", False))

    for i in range(cfg.num_encoder_layers):
        ours, theirs = f"encoder.layers.{i}", f"model.encoder.layers.{i}"
        linear(f"{ours}.self_attn.qkv_proj", f"{theirs}.self_attn", "in", "qkv")
        linear(f"{ours}.self_attn.out_proj", f"{theirs}.self_attn.out_proj", "out")
        linear(f"{ours}.ffn.fc1", f"{theirs}.fc1", "in")
        linear(f"{ours}.ffn.fc2", f"{theirs}.fc2", "out")
        norm(f"{ours}.attn_block.norm", f"{theirs}.self_attn_layer_norm")
        norm(f"{ours}.ffn_block.norm", f"{theirs}.final_layer_norm")
    for i in range(cfg.num_decoder_layers):
        ours, theirs = f"decoder.layers.{i}", f"model.decoder.layers.{i}"
        linear(f"{ours}.self_attn.qkv_proj", f"{theirs}.self_attn", "in", "qkv")
        linear(f"{ours}.self_attn.out_proj", f"{theirs}.self_attn.out_proj", "out")
        linear(f"{ours}.cross_attn.q_proj", f"{theirs}.encoder_attn.q_proj", "in")
        linear(f"{ours}.cross_attn.kv_proj", f"{theirs}.encoder_attn", "in", "kv")
        linear(f"{ours}.cross_attn.out_proj", f"{theirs}.encoder_attn.out_proj", "out")
        linear(f"{ours}.ffn.fc1", f"{theirs}.fc1", "in")
        linear(f"{ours}.ffn.fc2", f"{theirs}.fc2", "out")
        norm(f"{ours}.self_block.norm", f"{theirs}.self_attn_layer_norm")
        norm(f"{ours}.cross_block.norm", f"{theirs}.encoder_attn_layer_norm")
        norm(f"{ours}.ffn_block.norm", f"{theirs}.final_layer_norm")
    if cfg.pre_norm:
        norm("encoder.final_norm", "model.encoder.layer_norm")
        norm("decoder.final_norm", "model.decoder.layer_norm")
    lm_head = ["lm_head.weight"] if cfg.tie_output else []
    if cfg.share_embeddings:
        names.append(("encoder.embed.tokens.weight", ["model.shared.weight", "model.encoder.embed_tokens.weight",
                                                      "model.decoder.embed_tokens.weight", *lm_head], "in", False))
    else:
        names.append(("encoder.embed.tokens.weight", ["model.encoder.embed_tokens.weight"], "in", False))
        names.append(("decoder.embed.tokens.weight", ["model.decoder.embed_tokens.weight", *lm_head], "in", False))
    if not cfg.tie_output:
        names.append(("decoder.output.weight", ["lm_head.weight"], "in", False))
    return names


def _permute(tensor: torch.Tensor, side: str, order: torch.Tensor) -> torch.Tensor:
    if side == "in":
        return tensor[:, order]
    if side == "out":
        return tensor[order]
    return tensor


def to_transformers(net: Seq2SeqTransformer) -> dict[str, torch.Tensor]:
    """Our network's weights as a transformers state dict (Marian or Pegasus names, permuted basis;
    without the position tables, which transformers computes, and ``final_logits_bias`` unless the
    network has an output bias: transformers fills it with zeros)."""
    cfg = net.config
    ours = {k: v.detach().float().cpu() for k, v in net.state_dict().items()}
    order = residual_order(cfg.d_model)
    state = {}
    for name, theirs, side, fused in weight_map(cfg):
        tensor = _permute(ours[name], side, order)
        parts = tensor.chunk(len(theirs)) if fused else [tensor.contiguous()] * len(theirs)
        state.update((t, part.contiguous()) for t, part in zip(theirs, parts))
    if cfg.output_bias:
        state["final_logits_bias"] = ours["decoder.output.bias"].unsqueeze(0)
    return state


def from_transformers(state: dict[str, torch.Tensor], cfg: TransformerConfig) -> dict[str, torch.Tensor]:
    """The inverse of :func:`to_transformers`: a transformers state dict as our network's weights
    (every name of :class:`Seq2SeqTransformer`'s state dict; tied names get the same tensor)."""
    back = torch.argsort(residual_order(cfg.d_model))
    ours = {}
    for name, theirs, side, fused in weight_map(cfg):
        tensor = torch.cat([state[t].float() for t in theirs]) if fused else state[theirs[0]].float()
        ours[name] = _permute(tensor, side, back).contiguous()
    if cfg.share_embeddings:
        ours["decoder.embed.tokens.weight"] = ours["encoder.embed.tokens.weight"]
    if cfg.tie_output:
        ours["decoder.output.weight"] = ours["decoder.embed.tokens.weight"]
    if cfg.output_bias:
        ours["decoder.output.bias"] = state["final_logits_bias"].float().reshape(-1)
    return ours


# ----------------------------------------------------------------------- config and decoding
def length_penalty(alpha: float, typical_length: int = TYPICAL_OUTPUT_LENGTH, kind: str = "gnmt") -> float:
    """transformers' ``length_penalty`` for ours: ``alpha`` itself with ``kind="average"``; for GNMT's
    the exponent with the same slope in ``log n`` at outputs of ``typical_length`` tokens (EOS
    included), ``alpha * n / (n + 5)``. Exact at 0."""
    if kind == "average":
        return alpha
    return round(alpha * typical_length / (typical_length + 5.0), 4)


def model_config(cfg: TransformerConfig):
    """The transformers config (``MarianConfig`` or ``PegasusConfig``) of a network of ``cfg``."""
    transformers = require_transformers()
    # transformers' ACT2FN names are ours (gelu: the exact erf form in both; swish: x * sigmoid(x)).
    common: dict[str, Any] = dict(
        d_model=cfg.d_model, encoder_layers=cfg.num_encoder_layers, decoder_layers=cfg.num_decoder_layers,
        encoder_attention_heads=cfg.num_heads, decoder_attention_heads=cfg.num_heads,
        encoder_ffn_dim=cfg.d_ff, decoder_ffn_dim=cfg.d_ff, activation_function=cfg.activation,
        max_position_embeddings=cfg.max_positions, scale_embedding=True,
        dropout=cfg.dropout, attention_dropout=cfg.attention_dropout, activation_dropout=cfg.dropout,
        pad_token_id=cfg.pad_id, bos_token_id=cfg.bos_id, eos_token_id=cfg.eos_id,
        decoder_start_token_id=cfg.bos_id, forced_eos_token_id=None, tie_word_embeddings=cfg.tie_output,
    )
    if cfg.pre_norm:  # Pegasus: pre-LN; Marian: post-LN
        return transformers.PegasusConfig(vocab_size=cfg.tgt_vocab_size, **common)
    return transformers.MarianConfig(
        vocab_size=cfg.src_vocab_size, decoder_vocab_size=cfg.tgt_vocab_size,
        share_encoder_decoder_embeddings=cfg.share_embeddings, **common,
    )


def generation_settings(cfg: TransformerConfig, decoding: DecodingConfig) -> dict[str, Any]:
    """``generation_config.json``'s settings for ``decoding``; a strategy with no counterpart here is
    refused rather than exported as greedy decoding."""
    if decoding.strategy not in MAPPED_STRATEGIES:
        raise ConfigError(f"decoding.strategy={decoding.strategy}: the transformers export maps "
                          f"{', '.join(MAPPED_STRATEGIES[:-1])} and {MAPPED_STRATEGIES[-1]} "
                          "(inference/hf_export.generation_settings); export with one of them")
    settings: dict[str, Any] = {
        "decoder_start_token_id": cfg.bos_id, "bos_token_id": cfg.bos_id, "eos_token_id": cfg.eos_id,
        "pad_token_id": cfg.pad_id, "forced_eos_token_id": None,
        "suppress_tokens": [cfg.pad_id, cfg.bos_id],
        "max_length": cfg.max_positions,
    }
    if decoding.strategy == "beam":  # (transformers refuses beam settings without beams)
        settings.update(num_beams=decoding.beam_size, early_stopping=True, length_penalty=length_penalty(decoding.alpha, kind=decoding.length_penalty))
    if decoding.min_len:
        settings["min_new_tokens"] = decoding.min_len
    if decoding.no_repeat_ngram_size:
        settings["no_repeat_ngram_size"] = decoding.no_repeat_ngram_size
    if decoding.strategy == "sampling":
        settings.update(do_sample=True, temperature=decoding.temperature, top_k=decoding.top_k or None,
                        top_p=decoding.top_p)
    return settings


def build_transformers_model(net: Seq2SeqTransformer, decoding: DecodingConfig | None = None):
    """The transformers model (eval mode) computing what ``net`` computes."""
    transformers = require_transformers()
    cfg = net.config
    check_exportable(cfg)
    config = model_config(cfg)
    cls = transformers.PegasusForConditionalGeneration if cfg.pre_norm else transformers.MarianMTModel
    model = cls(config)
    state = model.state_dict()
    state.update(to_transformers(net))
    model.load_state_dict(state)  # (strict: a name the class does not have raises)
    model.generation_config = transformers.GenerationConfig(**generation_settings(cfg, decoding or DecodingConfig()))
    return model.eval()


# --------------------------------------------------------------------------------- tokenizer
def vocabularies(tokenizer: Tokenizer, cfg: TransformerConfig) -> list[dict[str, int]]:
    """``vocab.json`` of each side (every piece with its id), or :class:`ConfigError` for a tokenizer
    ``MarianTokenizer`` cannot reproduce."""
    vocabs = [{piece: i for i, piece in enumerate(ct2_export.vocabulary(processor, side, size, "vocab.json"))}
              for side, processor, size in (("source", tokenizer.src, cfg.src_vocab_size),
                                            ("target", tokenizer.tgt, cfg.tgt_vocab_size))]
    if tokenizer.target_tags:
        raise ConfigError(
            "this is a multilingual model (target-language tags on the source); MarianTokenizer does not put our "
            "<2xx> tags first, so it cannot be exported to transformers"
        )
    return vocabs


def write_tokenizer(folder: Path, tokenizer: Tokenizer, cfg: TransformerConfig, vocabs: list[dict[str, int]],
                    languages: tuple) -> None:
    """The ``MarianTokenizer`` files of ``tokenizer`` in ``folder`` (through its own ``save_pretrained``,
    so ``tokenizer_config.json`` is what ``AutoTokenizer`` expects)."""
    transformers = require_transformers()
    state = tokenizer.state_dict()
    separate = not cfg.share_embeddings
    (folder / SOURCE_SPM).write_bytes(state["src_model"])
    (folder / TARGET_SPM).write_bytes(state["tgt_model"] or state["src_model"])
    for name, vocab in zip((VOCAB, TARGET_VOCAB), vocabs[: 1 + separate]):
        (folder / name).write_text(json.dumps(vocab, ensure_ascii=False, indent=1))
    with warnings.catch_warnings():  # its advice to install sacremoses: not used for tokenizing
        warnings.filterwarnings("ignore", message="Recommended: pip install sacremoses")
        hf_tokenizer = transformers.MarianTokenizer(
            source_spm=str(folder / SOURCE_SPM), target_spm=str(folder / TARGET_SPM), vocab=str(folder / VOCAB),
            target_vocab_file=str(folder / TARGET_VOCAB) if separate else None, separate_vocabs=separate,
            source_lang=languages[0], target_lang=languages[1], model_max_length=cfg.max_positions,
        )
    hf_tokenizer.save_pretrained(str(folder))


@contextlib.contextmanager
def quiet_progress(transformers):
    """No progress bars from transformers while writing (a command prints its result, not bars)."""
    logging = transformers.utils.logging
    enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            logging.enable_progress_bar()


# ------------------------------------------------------------------------------- the folder
def export_transformers(
    ckpt_path: str | Path | None,
    output_dir: str | Path | None,
    *,
    force: bool = False,
    license: str | None = None,
    decoding: DecodingConfig | Any = None,
) -> Path:
    """Export a checkpoint to a transformers model folder; returns the folder.

    ``force`` replaces a non-empty ``output_dir``; ``license`` goes into the model card (``other``
    when not given); ``decoding`` (a :class:`DecodingConfig` or the ``decoding`` config group; default
    beam search with our defaults) becomes ``generation_config.json``. User errors raise
    :class:`~seq2seq.errors.Seq2SeqError` before anything is written.
    """
    transformers = require_transformers()
    if not isinstance(decoding, DecodingConfig):
        decoding = DecodingConfig.from_mapping(decoding if decoding is not None else {"strategy": "beam"})
    decoding.validate()
    output = check_output_dir(output_dir, force)
    checkpoint = read_checkpoint(ckpt_path)
    net, tokenizer = build_model(checkpoint, ckpt_path)
    model = build_transformers_model(net, decoding)  # (refuses what no class represents)
    vocabs = vocabularies(tokenizer, net.config)
    run = run_folder(ckpt_path)
    info = {
        "name": output.name,
        "format": "transformers",
        "transformers_version": transformers.__version__,
        "model_class": type(model).__name__,
        "model_type": model.config.model_type,
        "quantization": None,
        **source_info(ckpt_path, checkpoint, net, run),
        "tokenizer": {"source": SOURCE_SPM, "target": TARGET_SPM},
        "residual_order": "transformers' dimension i is ours residual_order(d_model)[i] (sines, then cosines)",
        "decoding": dict(decoding.__dict__),
        "generation_config": model.generation_config.to_diff_dict(),
        # Our default alpha in transformers' terms (the card explains the mapping with it).
        "length_penalty_mapping": {"alpha": DecodingConfig.alpha, "typical_length": TYPICAL_OUTPUT_LENGTH,
                                   "length_penalty": length_penalty(DecodingConfig.alpha)},
    }
    data = read_run(run)[1].get("data") or {}

    def write(folder: Path) -> None:
        with quiet_progress(transformers):
            model.save_pretrained(str(folder))
            write_tokenizer(folder, tokenizer, net.config, vocabs, (data.get("src_lang"), data.get("tgt_lang")))

    return write_export(output, info, run, license, write)

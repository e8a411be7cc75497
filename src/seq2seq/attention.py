"""Cross-attention heatmap of one sentence: ``python -m seq2seq.attention ckpt_path=PATH text="..." output=FILE.png``.

Prints the translation and, for each target word, the source word it attends to most; writes the
heatmaps (one panel per decoder layer and their mean) to ``output``. The maps and plots come from
:mod:`seq2seq.analysis.attention`; configuration: ``conf/attention.yaml``.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from seq2seq.analysis.attention import (
    AttentionMaps,
    attention_maps,
    figure_png,
    plot_cross_attention,
    strongest_sources,
)
from seq2seq.config import config_dir, user_errors_exit
from seq2seq.decoding.search import DecodingConfig
from seq2seq.errors import ConfigError
from seq2seq.inference.checkpoint import load_model, resolve_device
from seq2seq.utils.io import atomic_write_bytes


@user_errors_exit
def plot_attention(cfg: DictConfig) -> AttentionMaps:
    """Run the command for a composed ``attention`` config (user errors: one message, exit 2)."""
    if not cfg.get("text"):
        raise ConfigError('text is missing: pass text="a sentence to translate"')
    if not cfg.get("output"):
        raise ConfigError("output is missing: pass output=FILE.png")
    decoding = DecodingConfig.from_mapping({**cfg.decoding, "n_best": 1}).validate()
    layers = cfg.get("layers")  # None (every layer and their mean), one of them, or a list
    if layers is not None:
        layers = [v if v == "mean" else int(v) for v in (layers if OmegaConf.is_list(layers) else [layers])]
    net, tokenizer = load_model(cfg.get("ckpt_path"), resolve_device(cfg.get("device")))
    maps = attention_maps(net, tokenizer, cfg.text, target=cfg.get("target"), decoding=decoding)
    fig = plot_cross_attention(maps, layers, cfg.get("head"), bool(cfg.get("words", True)))
    output = Path(cfg.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(output, figure_png(fig, int(cfg.get("dpi", 120))))
    print(f"translation: {maps.translation}")
    for tgt, src, weight in strongest_sources(maps, "mean" if layers is None else layers[-1]):
        print(f"{tgt}\t<- {src}\t{weight:.2f}")
    print(f"heatmap: {output}")
    return maps


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="attention")
def main(cfg: DictConfig) -> None:
    """Console script ``seq2seq-attention``."""
    plot_attention(cfg)


if __name__ == "__main__":
    main()

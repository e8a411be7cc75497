"""Export a trained checkpoint for serving or sharing (``conf/export.yaml``).

    seq2seq-export ckpt_path=RUN/checkpoints/best.ckpt output_dir=exported/en-de [quantization=int8] [force=true]
    seq2seq-export ckpt_path=RUN/checkpoints/best.ckpt output_dir=exported/en-de-hf format=transformers

``format=ctranslate2`` (the default, ``pip install 'seq2seq[export]'``) writes a CTranslate2 model
folder (:mod:`seq2seq.inference.ct2_export`); ``format=transformers``
(``pip install 'seq2seq[transformers]'``) a Hugging Face folder that ``AutoModelForSeq2SeqLM`` loads
(:mod:`seq2seq.inference.hf_export`); both with a model card. User errors (a bad checkpoint, a
non-empty ``output_dir`` without ``force=true``, a model the format cannot represent, a missing
package) end with one ``error: ...`` line and exit status 2 before anything is written.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from seq2seq.config import config_dir, user_errors_exit
from seq2seq.errors import ConfigError
from seq2seq.inference.ct2_export import export_ctranslate2
from seq2seq.inference.hf_export import export_transformers

FORMATS = ("ctranslate2", "transformers")


@user_errors_exit
def export(cfg: DictConfig) -> None:
    """Run the command for a composed ``export`` config (user errors: one message, exit 2)."""
    fmt = cfg.get("format") or "ctranslate2"
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt!r}: use one of {', '.join(FORMATS)}")
    if fmt == "transformers":
        if cfg.get("quantization") is not None:
            raise ConfigError(f"quantization={cfg.quantization} is a CTranslate2 setting; format=transformers writes "
                              "float32 weights (leave quantization null)")
        output = export_transformers(cfg.get("ckpt_path"), cfg.get("output_dir"), force=bool(cfg.get("force")),
                                     license=cfg.get("license"), decoding=cfg.get("decoding"))
    else:
        output = export_ctranslate2(cfg.get("ckpt_path"), cfg.get("output_dir"), cfg.get("quantization"),
                                    force=bool(cfg.get("force")), license=cfg.get("license"),
                                    int8_weight_bits=cfg.get("int8_weight_bits", 7))
    print(f"Exported to {output}")


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="export")
def main(cfg: DictConfig) -> None:
    """Console script ``seq2seq-export``."""
    export(cfg)


if __name__ == "__main__":
    main()

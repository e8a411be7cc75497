"""What the transformers export and import tests share: the transformers module (or a skip) and the
layouts of our network that export, with the class that represents each."""

from __future__ import annotations

from helpers import optional_module

LAYOUTS = {  # name: (tokenizer, model settings, transformers class)
    "post-LN relu, shared + tied": ("joint", {}, "MarianMTModel"),
    "pre-LN gelu, shared + tied": ("joint", {"pre_norm": True, "activation": "gelu"}, "PegasusForConditionalGeneration"),
    "pre-LN, shared, own output matrix": ("joint", {"pre_norm": True, "tie_output": False},
                                          "PegasusForConditionalGeneration"),
    "post-LN gelu, separate vocabularies, tied": ("separate", {"share_embeddings": False, "activation": "gelu"},
                                                  "MarianMTModel"),
    "post-LN, separate vocabularies, untied": ("separate", {"share_embeddings": False, "tie_output": False},
                                               "MarianMTModel"),
    "post-LN swish, output bias (OPUS-MT's)": ("joint", {"activation": "swish", "output_bias": True}, "MarianMTModel"),
    "pre-LN swish, output bias": ("joint", {"pre_norm": True, "activation": "swish", "output_bias": True},
                                  "PegasusForConditionalGeneration"),
}


def transformers_or_skip():
    """The transformers module, quiet (no progress bars or info logs); skips without it, fails under CI=true."""
    transformers = optional_module("transformers", "transformers")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers

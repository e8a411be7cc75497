"""What the transformers export and import tests share: the transformers module (or a skip) and the
layouts of our network that export, with the class that represents each."""

from __future__ import annotations

import os

import pytest

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
    try:
        import transformers
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("transformers is not installed; CI installs the dev extra, which has it")
        pytest.skip("transformers is not installed (pip install 'seq2seq[transformers]')")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers

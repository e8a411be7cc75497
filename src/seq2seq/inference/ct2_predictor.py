"""Translate with an exported CTranslate2 model exactly as :class:`~seq2seq.inference.predictor.Predictor` does.

:class:`CT2Predictor` is a :class:`Predictor` whose batches go through ``ctranslate2.Translator``
instead of our PyTorch search (tokenization, truncation, batching, blank lines and detokenization
are the predictor's). It reproduces our greedy and beam outputs token for token: sources are our
pieces without the EOS (the model appends it); each source gets our length limit
(``exact_limits``: one call per distinct limit, else one with the batch's largest) and
``min_decoding_length`` ``min_len``; CTranslate2's summed log-probabilities (EOS included) are
divided by our length penalty and the n-best re-ranked by it; PAD and BOS are suppressed
(``suppress_special``), as our searches never emit them.

Not exact (docs/export-and-serve.md): suppressing PAD/BOS, ``min_len`` and ``no_repeat_ngram_size``
make CTranslate2 renormalize over the other tokens (its scores are higher than ours by what they
had); sampling draws other numbers (refused here); at the step where a sentence's ``beam_size``-th
hypothesis finishes, ours keeps only as many finished ones as it needs, CTranslate2 the best.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from torch import Tensor

from seq2seq.data.tokenizer import Tokenizer
from seq2seq.decoding.search import DecodingConfig, Hypothesis, max_output_lengths, rerank
from seq2seq.errors import ConfigError
from seq2seq.inference.ct2_export import EXPORT_INFO, require_ctranslate2
from seq2seq.inference.predictor import Predictor

# A length penalty that leaves every float32 score as it is (x / n ** 1e-10 rounds back to x for
# n < 10**8) but is not 0, so that CTranslate2's beam search waits for beam_size hypotheses.
NEUTRAL_LENGTH_PENALTY = 1e-10


class CT2Predictor(Predictor):
    """Decode with an exported CTranslate2 model; see the module docstring.

    ``compute_type``: CTranslate2's (``default`` keeps the exported weight type); ``threads``: its
    ``intra_threads`` (0: its default). ``translate``, ``generate`` and ``predict_batch`` work as
    the predictor's; ``predict_loader`` (which also scores references) needs the PyTorch model.
    """

    def __init__(self, model_dir: str | Path, decoding: DecodingConfig | None = None, *, device: str = "cpu",
                 compute_type: str = "default", threads: int = 0, exact_limits: bool = True,
                 suppress_special: bool = True, engine_defaults: bool = False):
        ctranslate2 = require_ctranslate2()
        model_dir = Path(model_dir)
        try:
            self.info = json.loads((model_dir / EXPORT_INFO).read_text())
            names = self.info["tokenizer"]
            src = (model_dir / names["source"]).read_bytes()
            tgt = None if names["target"] == names["source"] else (model_dir / names["target"]).read_bytes()
        except (OSError, ValueError, KeyError) as err:
            raise ConfigError(f"{model_dir} is not a model folder written by seq2seq-export ({err})") from None
        self.tokenizer = Tokenizer(src, tgt)
        self.decoding = (decoding or DecodingConfig()).validate()
        if self.decoding.strategy not in ("greedy", "beam"):
            raise ConfigError(f"decoding.strategy={self.decoding.strategy}: CTranslate2 decoding here is greedy or beam")
        config = self.info["model_config"]
        self.max_positions, self.pad_id = int(config["max_positions"]), int(config["pad_id"])
        self.exact_limits, self.suppress_special = exact_limits, suppress_special
        self.engine_defaults = engine_defaults
        self.net, self.device = None, "cpu"
        self.translator = ctranslate2.Translator(str(model_dir), device=device, compute_type=compute_type,
                                                 intra_threads=threads, inter_threads=1)

    def predict_loader(self, loader):
        raise NotImplementedError("predict_loader scores references with the PyTorch model; use Predictor")

    def options(self, limit: int) -> dict:
        """``translate_batch`` keywords for outputs of at most ``limit`` tokens.

        With ``engine_defaults``: CTranslate2 as its users call it, ``beam_size`` and
        ``max_decoding_length`` only (its own length penalty, one hypothesis, nothing suppressed), so
        outputs can differ from ours; a speed peer rather than a parity check."""
        cfg = self.decoding
        beam = cfg.strategy == "beam"
        options = dict(beam_size=cfg.beam_size if beam else 1, max_decoding_length=limit, return_scores=True,
                       return_end_token=True)
        if self.engine_defaults:
            return options
        options.update(num_hypotheses=options["beam_size"], length_penalty=NEUTRAL_LENGTH_PENALTY if beam else 0.0,
                       min_decoding_length=cfg.min_len, max_input_length=0, no_repeat_ngram_size=cfg.no_repeat_ngram_size)
        if self.suppress_special:
            special = self.info["special_tokens"]
            options["suppress_sequences"] = [[special["pad"]], [special["bos"]]]
        return options

    def hypotheses(self, sources: list[list[int]], limit: int) -> list[list[Hypothesis]]:
        """n-best (best first, GNMT-ranked) of source ids without EOS, outputs of at most ``limit`` tokens."""
        tgt, eos = self.tokenizer.tgt, self.tokenizer.eos_id
        pieces = [[self.tokenizer.src.id_to_piece(i) for i in ids] for ids in sources]
        results = self.translator.translate_batch(pieces, **self.options(limit))
        nbest = []
        for result in results:
            hyps = []
            for tokens, total in zip(result.hypotheses, result.scores):
                ids = [tgt.piece_to_id(p) for p in tokens]
                ended = bool(ids) and ids[-1] == eos
                hyps.append(Hypothesis(ids[:-1] if ended else ids, total, total, ended))
            nbest.append(rerank(hyps, self.decoding.alpha, self.decoding.length_penalty)[: self.decoding.n_best])
        return nbest

    def generate(self, src: Tensor) -> list[list[Hypothesis]]:
        """n-best hypotheses, best first, of a padded batch of source ids (B, S) that end with EOS."""
        cfg, eos = self.decoding, self.tokenizer.eos_id
        limits = max_output_lengths(src, self.pad_id, cfg.max_len_a, cfg.max_len_b, self.max_positions).tolist()
        sources = []
        for row in src.tolist():
            ids = [i for i in row if i != self.pad_id]
            sources.append(ids[:-1] if ids and ids[-1] == eos else ids)  # the model appends EOS itself
        groups: dict[int, list[int]] = defaultdict(list)
        for i, limit in enumerate(limits):
            groups[limit if self.exact_limits else max(limits)].append(i)
        out: list[list[Hypothesis]] = [[] for _ in sources]
        for limit, rows in groups.items():
            for i, hyps in zip(rows, self.hypotheses([sources[i] for i in rows], limit)):
                out[i] = hyps
        return out

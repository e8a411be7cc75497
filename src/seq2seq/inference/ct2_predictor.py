"""Translate with an exported CTranslate2 model exactly as :class:`~seq2seq.inference.predictor.Predictor` does.

:class:`CT2Predictor` is a :class:`Predictor` whose batches go through ``ctranslate2.Translator``
instead of our PyTorch search; tokenization, truncation, batching, blank lines and detokenization are
the predictor's own. It reproduces our greedy and beam searches:

* sources: our ids without the EOS (the exported model appends it), as pieces;
* length limit: ours per source (:func:`~seq2seq.decoding.search.max_output_lengths`). CTranslate2
  takes one ``max_decoding_length`` per call, so with ``exact_limits`` (default) a batch is decoded
  in one call per distinct limit, without it in one call with the batch's largest; ``min_len`` is
  ``min_decoding_length`` (CTranslate2's default is 1, ours 0);
* scores: CTranslate2's summed log-probabilities (EOS included, ``return_end_token``), divided here by
  our length penalty and the n-best re-ranked by it. Greedy runs with ``length_penalty=0``, beam
  search with one too small to change a float32 score (``1e-10``): a non-zero penalty makes
  CTranslate2 stop a sentence once ``beam_size`` hypotheses have finished, as ours does, while
  candidates stay ranked by the plain sum;
* PAD and BOS: never emitted by our searches; ``suppress_special`` (default) forbids them in
  CTranslate2 too (``suppress_sequences``), so greedy outputs are ours token for token, but CTranslate2
  then renormalizes over the other tokens: each step's log-probability is higher than ours by
  ``-log(1 - p(PAD) - p(BOS))`` (up to 0.02 per sentence in the tests' toy model), which may reorder
  nearly tied beams. Without it the log-probabilities are ours (within 1e-5).

Not exact: ``no_repeat_ngram_size`` and ``min_len`` renormalize in CTranslate2 (ours only block
tokens); sampling draws other random numbers (refused here); at the step where a sentence's
``beam_size``-th hypothesis finishes, ours keeps only as many of that step's finished hypotheses as
it needs, CTranslate2 the ``beam_size`` best of all of them.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from torch import Tensor

from seq2seq.data.tokenizer import Tokenizer
from seq2seq.decoding.search import DecodingConfig, Hypothesis, length_penalty, max_output_lengths
from seq2seq.errors import ConfigError
from seq2seq.inference.ct2_export import EXPORT_INFO, require_ctranslate2
from seq2seq.inference.predictor import Predictor

# A length penalty that leaves every float32 score as it is (x / n ** 1e-10 rounds back to x for
# n < 10**8) but is not 0, so that CTranslate2's beam search waits for beam_size hypotheses.
NEUTRAL_LENGTH_PENALTY = 1e-10


def load_exported_tokenizer(model_dir: str | Path) -> tuple[Tokenizer, dict]:
    """The tokenizer written beside an exported model, and its ``seq2seq_export.json``."""
    model_dir = Path(model_dir)
    try:
        info = json.loads((model_dir / EXPORT_INFO).read_text())
        names = info["tokenizer"]
        src = (model_dir / names["source"]).read_bytes()
        tgt = None if names["target"] == names["source"] else (model_dir / names["target"]).read_bytes()
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(f"{model_dir} is not a model folder written by seq2seq-export ({err})") from None
    return Tokenizer(src, tgt), info


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
        self.tokenizer, self.info = load_exported_tokenizer(model_dir)
        self.decoding = (decoding or DecodingConfig()).validate()
        if self.decoding.strategy not in ("greedy", "beam"):
            raise ConfigError(f"decoding.strategy={self.decoding.strategy}: CTranslate2 decoding here is greedy or beam")
        config = self.info["model_config"]
        self._max_positions, self._pad_id = int(config["max_positions"]), int(config["pad_id"])
        self.exact_limits, self.suppress_special = exact_limits, suppress_special
        self.engine_defaults = engine_defaults
        self.net, self.device = None, "cpu"
        self.translator = ctranslate2.Translator(str(model_dir), device=device, compute_type=compute_type,
                                                 intra_threads=threads, inter_threads=1)

    @property
    def max_positions(self) -> int:
        return self._max_positions

    @property
    def pad_id(self) -> int:
        return self._pad_id

    def predict_loader(self, loader):
        raise NotImplementedError("predict_loader scores references with the PyTorch model; use Predictor")

    def options(self, limit: int) -> dict:
        """``translate_batch`` keywords for outputs of at most ``limit`` tokens.

        With ``engine_defaults``: CTranslate2 as its users call it, ``beam_size`` and
        ``max_decoding_length`` only (its own length penalty, one hypothesis, nothing suppressed), so
        outputs can differ from ours; a speed peer rather than a parity check."""
        cfg = self.decoding
        beam = cfg.strategy == "beam"
        if self.engine_defaults:
            return dict(beam_size=cfg.beam_size if beam else 1, max_decoding_length=limit, return_scores=True,
                        return_end_token=True)
        options = dict(
            beam_size=cfg.beam_size if beam else 1, num_hypotheses=cfg.beam_size if beam else 1,
            length_penalty=NEUTRAL_LENGTH_PENALTY if beam else 0.0, return_scores=True, return_end_token=True,
            min_decoding_length=cfg.min_len, max_decoding_length=limit, max_input_length=0,
            no_repeat_ngram_size=cfg.no_repeat_ngram_size,
        )
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
                penalty = length_penalty(len(ids), self.decoding.alpha, self.decoding.length_penalty)  # EOS counted
                hyps.append(Hypothesis(ids[:-1] if ended else ids, total / penalty, total, ended))
            nbest.append(sorted(hyps, key=lambda h: -h.score)[: self.decoding.n_best])
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

"""Subword tokenization with sentencepiece.

A :class:`Tokenizer` holds one sentencepiece model (joint, for a shared vocabulary and tied
embeddings) or two (one per side). Ids are fixed across the project: pad 0, unk 1, bos 2, eos 3.
A tokenizer serializes to bytes (:meth:`Tokenizer.state_dict`), which is what checkpoints store so
that a checkpoint alone can translate. Decoding inverts encoding, so metrics see real text.

A multilingual tokenizer (:mod:`seq2seq.data.multilingual`) also knows its target languages: each
has a tag (``<2de>``), a user-defined symbol of the one joint sentencepiece model, so it is always
one piece. :meth:`Tokenizer.for_target` gives a view that puts the tag's id first on every source
(Johnson et al. 2017; fairseq's ``--encoder-langtok tgt``); the language list travels in
:meth:`Tokenizer.state_dict`, so a checkpoint knows its languages.
"""

from __future__ import annotations

import collections
import concurrent.futures
import concurrent.futures.process
import copy
import hashlib
import io
import itertools
import json
import logging
import multiprocessing
import os
import pickle
import signal
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sentencepiece as spm

from seq2seq.data.progress import Progress
from seq2seq.data.sources import PairChunk, PairSource
from seq2seq.errors import ConfigError
from seq2seq.utils.io import atomic_write_bytes

log = logging.getLogger(__name__)

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3

# Above this many training sentences (both sides together for a joint vocabulary) sentencepiece
# trains on a sample of this size, drawn with SAMPLE_SEED (fixed, so the run's seed does not
# change the tokenizer). 2M sentences of ~25 words: ~30 s and ~2 GB to train a 32k BPE vocabulary.
SAMPLE_SENTENCES = 2_000_000
SAMPLE_SEED = 1234
SUBPROCESS_TRAINING_SENTENCES = 500_000  # sentencepiece trains in a child process on this many or more


def language_tag(lang: str) -> str:
    """The target-language tag of ``lang`` (``de`` -> ``<2de>``), as fairseq and Johnson et al. write it."""
    return f"<2{lang}>"


def train_sentencepiece(texts: Iterable[str], vocab_size: int, model_type: str = "unigram",
                        user_symbols: Sequence[str] = ()) -> bytes:
    """Train a sentencepiece model on ``texts`` in memory; returns the serialized model.

    ``user_symbols`` (language tags) become pieces of their own, right after the special ids
    (ids 4, 5, ...), and are never split."""
    model = io.BytesIO()
    extra = {"user_defined_symbols": list(user_symbols)} if user_symbols else {}
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=1.0,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        # Small corpora cannot fill a large vocabulary; take what they have instead of failing.
        hard_vocab_limit=False,
        input_sentence_size=2_000_000,
        shuffle_input_sentence=True,
        num_threads=2,
        minloglevel=2,
        **extra,
    )
    return model.getvalue()


def truncate_source(ids, max_len: int | None):
    """A source's ids (ending with EOS) cut to ``max_len`` ids, keeping the EOS; a list or an array."""
    if max_len is None or len(ids) <= max_len:
        return ids
    if isinstance(ids, np.ndarray):
        return np.concatenate([ids[: max_len - 1], np.asarray([EOS_ID], dtype=ids.dtype)])
    return list(ids[: max_len - 1]) + [EOS_ID]


class TrainingText:
    """What sentencepiece trains on, from the training splits of one or more corpora.

    One corpus: its two sides. Several (a multilingual model): each side's text once (en->de and
    en->fr share their English), sources first. Every sentence up to :data:`SAMPLE_SENTENCES` of
    them (both sides together for a joint vocabulary), read as a stream; above, a sample of that
    many drawn with :data:`SAMPLE_SEED`, decoding only the picked lines, in a seeded random order
    (what sentencepiece's ``shuffle_input_sentence`` does). :attr:`digest` keys the cache: the
    content of what is sampled from and the sampling rule.
    """

    def __init__(self, sources: Sequence[PairSource], target_tags: Mapping[str, str] | None = None):
        self.single, self.target_tags = len(sources) == 1, dict(target_tags or {})
        sides = [(source, side) for side in ("src", "tgt") for source in sources]
        if not self.single:  # the same text in two corpora counts once
            keys = [(side, source.side_key(side)) for source, side in sides]
            sides = [pair for i, pair in enumerate(sides) if keys[i] not in keys[:i]]
        self.sides = sides
        if self.single and not target_tags:
            content = sources[0].digest()  # (the key a one-pair corpus always had)
        else:
            key = hashlib.sha256(b"corpora")
            for source, side in sides:
                key.update(f"\0{side}:{source.side_key(side)}".encode())
            key.update(json.dumps(dict(target_tags or {})).encode())
            content = key.hexdigest()
        # Whether sentencepiece samples follows from the content and these constants, so they are
        # part of the key rather than the sample size (the cached path never counts lines).
        self.digest = f"{content}|sample={SAMPLE_SENTENCES},{SAMPLE_SEED}"

    def in_subprocess(self, joint: bool) -> bool:
        """Whether sentencepiece trains on enough sentences (one side's for separate vocabularies) to
        train in a child process."""
        counts = [source.count() for source, _ in self.sides]
        return min(sum(counts) if joint else counts[0], SAMPLE_SENTENCES) >= SUBPROCESS_TRAINING_SENTENCES

    def texts(self, joint: bool) -> tuple[list[str], list[str]]:
        """(source texts, target texts): a joint vocabulary trains on both together."""
        counts = [source.count() for source, _ in self.sides]
        where = self.sides[0][0].where + ("" if self.single else f" and {len(self.sides) - 1} more")
        population = sum(counts) if joint else counts[0]
        if population <= SAMPLE_SENTENCES:
            with Progress(f"Reading {where} for sentencepiece", sum(counts), unit="lines") as progress:
                texts = [source.sentences(side, None, progress) for source, side in self.sides]
            return (texts[0], texts[1]) if self.single else ([t for side in texts for t in side], [])
        picked = np.sort(np.random.default_rng(SAMPLE_SEED).choice(population, size=SAMPLE_SENTENCES, replace=False))
        starts = np.cumsum([0, *counts]) if joint else np.zeros(len(counts) + 1, dtype=np.int64)
        with Progress(f"Sampling {SAMPLE_SENTENCES:,} sentences of {where} for sentencepiece", sum(counts),
                      unit="lines") as progress:
            texts = [
                source.sentences(side, picked[(picked >= lo) & (picked < (hi if joint else population))] - lo, progress)
                for (source, side), lo, hi in zip(self.sides, starts[:-1], starts[1:])
            ]
        if not joint:
            return texts[0], texts[1]
        both = [t for side in texts for t in side]
        del texts
        order = np.random.default_rng(SAMPLE_SEED + 1).permutation(len(both))
        return [both[i] for i in order.tolist()], []


def _specials(sp: spm.SentencePieceProcessor) -> tuple[int, int, int, int]:
    return sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()


def _check_model(sp: spm.SentencePieceProcessor) -> None:
    """A model that does not use the project's special ids is not one of ours (or is damaged)."""
    if sp.get_piece_size() <= EOS_ID or _specials(sp) != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
        raise ValueError(f"{sp.get_piece_size()} pieces, special ids {_specials(sp)}")


class Tokenizer:
    """Source and target sentencepiece processors (the same one when ``joint``).

    ``target_tags``: ``{language: tag}`` of a multilingual model (tags are pieces of the source
    model); empty for a model of one language pair. ``source_tag`` is set on the views
    :meth:`for_target` returns: the tag every source starts with.
    """

    pad_id, unk_id, bos_id, eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID

    def __init__(self, src_model: bytes, tgt_model: bytes | None = None, target_tags: Mapping[str, str] | None = None):
        self._src_bytes = src_model
        self._tgt_bytes = tgt_model
        self.src = spm.SentencePieceProcessor(model_proto=src_model)
        self.tgt = self.src if tgt_model is None else spm.SentencePieceProcessor(model_proto=tgt_model)
        self.target_tags = {str(k): str(v) for k, v in (target_tags or {}).items()}
        for lang, tag in self.target_tags.items():
            if self.src.piece_to_id(tag) == UNK_ID:
                raise ValueError(f"the target-language tag {tag!r} ({lang}) is not a piece of the source vocabulary")
        self.source_tag: str | None = None
        self._prefix: list[int] = []

    @property
    def target_languages(self) -> list[str]:
        """The languages a multilingual model translates into (in training's order); empty otherwise."""
        return list(self.target_tags)

    def for_target(self, lang: str | None) -> Tokenizer:
        """The tokenizer to translate into ``lang`` with: a view whose sources start with its tag.

        A model of one language pair takes ``lang=None`` (itself is returned); a multilingual one
        needs one of its :attr:`target_languages`. Anything else is a :class:`ConfigError` that
        says what to pass.
        """
        if lang is not None:
            lang = str(lang).strip()
        if not self.target_tags:
            if lang:
                raise ConfigError(
                    f"tgt_lang={lang}: this model translates one language pair and has no target-language tags; "
                    "leave tgt_lang out"
                )
            return self
        languages = ", ".join(self.target_tags)
        if not lang:
            raise ConfigError(
                f"this model is multilingual (target languages {languages}): choose one with tgt_lang "
                f"(e.g. tgt_lang={next(iter(self.target_tags))})"
            )
        if lang not in self.target_tags:
            raise ConfigError(f"tgt_lang={lang} is not a target language of this model: use one of {languages}")
        view = copy.copy(self)
        view.source_tag = self.target_tags[lang]
        view._prefix = [self.src.piece_to_id(view.source_tag)]
        return view

    @property
    def joint(self) -> bool:
        return self._tgt_bytes is None

    @property
    def one_vocabulary(self) -> bool:
        """Whether both sides have one vocabulary (so embeddings can be shared): a joint model, or two
        models with the same pieces, id for id (a Marian model's source and target segmenters over its
        one vocabulary, :mod:`seq2seq.inference.hf_import`)."""
        if self.joint:
            return True
        size = self.src.get_piece_size()
        return size == self.tgt.get_piece_size() and all(
            self.src.id_to_piece(i) == self.tgt.id_to_piece(i) for i in range(size))

    @property
    def src_vocab_size(self) -> int:
        return self.src.get_piece_size()

    @property
    def tgt_vocab_size(self) -> int:
        return self.tgt.get_piece_size()

    @classmethod
    def train(
        cls, src_texts: Sequence[str], tgt_texts: Sequence[str], vocab_size: int, joint: bool = True,
        model_type: str = "unigram", target_tags: Mapping[str, str] | None = None,
    ) -> Tokenizer:
        """Train on the training split: one model over both sides, or one per side. ``target_tags``
        (multilingual: ``{language: tag}``) become user-defined pieces of the source model."""
        tags = list((target_tags or {}).values())
        if joint:
            return cls(train_sentencepiece([*src_texts, *tgt_texts], vocab_size, model_type, user_symbols=tags),
                       target_tags=target_tags)
        return cls(
            train_sentencepiece(src_texts, vocab_size, model_type, user_symbols=tags),
            train_sentencepiece(tgt_texts, vocab_size, model_type),
            target_tags=target_tags,
        )

    @classmethod
    def cached_or_trained(cls, cache_dir: str | Path, text: TrainingText, vocab_size: int, joint: bool = True,
                          model_type: str = "unigram") -> Tokenizer:
        """The tokenizer cached for ``text`` (whose digest names its content and sampling), or one
        trained on it (its target tags as pieces) and cached; a cached model that cannot be loaded
        is trained again, with a warning. A large ``text`` is read and trained on in a forked process
        (where ``fork`` exists), so that the memory sentencepiece and the texts take (GBs for
        millions of sentences) goes back to the system when it ends instead of staying in this one.
        """
        target_tags = text.target_tags
        key = f"spm-v2|{vocab_size}|{joint}|{model_type}|{spm.__version__}|{text.digest}"
        if target_tags:  # (a model without tags keeps the key it always had)
            key += f"|tags:{json.dumps(dict(target_tags))}"
        path = Path(cache_dir) / f"spm-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
        src_file, tgt_file = path.with_suffix(".src.model"), path.with_suffix(".tgt.model")
        if src_file.exists() and (joint or tgt_file.exists()):
            try:
                tok = cls(src_file.read_bytes(), None if joint else tgt_file.read_bytes(), target_tags)
                _check_model(tok.src)
                _check_model(tok.tgt)
            except (OSError, RuntimeError, ValueError) as err:
                log.warning("The cached sentencepiece model %s is damaged (%s); training it again.", src_file,
                            str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__)
                for file in (src_file, tgt_file):
                    file.unlink(missing_ok=True)
            else:
                log.info("Loading the cached sentencepiece model %s", src_file)
                return tok

        def train() -> Tokenizer:
            src_texts, tgt_texts = text.texts(joint)
            log.info("Training a %s sentencepiece model (vocab_size=%d, %s) on %s sentences", model_type,
                     vocab_size, "joint" if joint else "one per side", f"{len(src_texts) + len(tgt_texts):,}")
            return cls.train(src_texts, tgt_texts, vocab_size, joint, model_type, target_tags)

        if text.in_subprocess(joint) and "fork" in multiprocessing.get_all_start_methods():
            tok = cls.from_state_dict(_in_forked_process(lambda: train().state_dict()))
        else:
            tok = train()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(src_file, tok._src_bytes)
        if not joint:
            atomic_write_bytes(tgt_file, tok._tgt_bytes)
        return tok

    def state_dict(self) -> dict:
        """The sentencepiece model(s) as bytes (what checkpoints store). A multilingual tokenizer adds
        ``target_tags`` (``{language: tag}`` as UTF-8 JSON: every value stays bytes or None, which
        the DataModule's cache keys hash), and a :meth:`for_target` view its ``source_tag``."""
        state = {"src_model": self._src_bytes, "tgt_model": self._tgt_bytes}
        if self.target_tags:
            state["target_tags"] = json.dumps(self.target_tags).encode("utf-8")
        if self.source_tag is not None:
            state["source_tag"] = self.source_tag.encode("utf-8")
        return state

    @classmethod
    def from_state_dict(cls, state: dict) -> Tokenizer:
        tags = state.get("target_tags")
        tokenizer = cls(state["src_model"], state.get("tgt_model"), json.loads(tags.decode("utf-8")) if tags else None)
        return tokenizer if state.get("source_tag") is None else tokenizer.for_target(
            {v: k for k, v in tokenizer.target_tags.items()}[state["source_tag"].decode("utf-8")])

    def difference(self, other: Tokenizer) -> str | None:
        """How ``other`` differs from this tokenizer, in a few words; None when they are the same.

        Checked in order: joint or separate vocabularies, then per side the vocabulary size, the
        special ids (pad, unk, bos, eos), the first piece that differs, and the model files
        themselves (same pieces but other scores or normalization rules segment text differently).
        """
        if self.joint != other.joint:
            describe = {True: "one joint vocabulary", False: "separate source and target vocabularies"}
            return f"{describe[self.joint]} vs {describe[other.joint]}"
        if self.target_tags != other.target_tags:
            def languages(tok):
                return f"target languages {', '.join(tok.target_tags)}" if tok.target_tags else "no target-language tags"
            return f"{languages(self)} vs {languages(other)}"
        for side, key in [("joint", "src")] if self.joint else [("source", "src"), ("target", "tgt")]:
            a, b = getattr(self, key), getattr(other, key)
            if a.get_piece_size() != b.get_piece_size():
                return f"{side} vocabulary of {a.get_piece_size()} vs {b.get_piece_size()} pieces"
            specials = [_specials(a), _specials(b)]
            if specials[0] != specials[1]:
                return f"{side} special ids (pad, unk, bos, eos) {specials[0]} vs {specials[1]}"
            for i in range(a.get_piece_size()):
                if a.id_to_piece(i) != b.id_to_piece(i):
                    return f"{side} piece {i}: {a.id_to_piece(i)!r} vs {b.id_to_piece(i)!r}"
            if getattr(self, f"_{key}_bytes") != getattr(other, f"_{key}_bytes"):
                return f"{side} sentencepiece models differ (same pieces, other scores or normalization)"
        return None

    def encode_source(self, texts: Sequence[str]) -> list[list[int]]:
        """Source ids, each followed by EOS (the encoder sees where the sentence ends); a
        :meth:`for_target` view puts the target language's tag first."""
        return [self._prefix + ids + [EOS_ID] for ids in self.src.encode(list(texts))]

    def encode_target(self, texts: Sequence[str]) -> list[list[int]]:
        """Target ids without BOS/EOS; the collator adds them for teacher forcing."""
        return self.tgt.encode(list(texts))

    def encode_flat(
        self, texts: Sequence[str], side: str, dtype: np.dtype | type = np.int32, num_threads: int = 1
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """``(ids, lengths, unknown)``: the ids of every text one after the other (``dtype``), each
        text's number of ids, and how many are ``<unk>``. ``side="source"`` gives what
        :meth:`encode_source` gives (EOS after each, a view's tag before), ``"target"`` what
        :meth:`encode_target` gives."""
        processor = self.src if side == "source" else self.tgt
        ids = processor.encode(list(texts), num_threads=num_threads)
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(lengths.sum()))
        del ids
        unknown = int(np.count_nonzero(flat == UNK_ID))
        if side == "source":
            flat = np.insert(flat, np.cumsum(lengths), np.asarray(EOS_ID, dtype=flat.dtype))
            lengths += 1
            if self._prefix:  # a for_target view: its tag before each sentence
                starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
                prefix = np.asarray(self._prefix, dtype=flat.dtype)
                flat = np.insert(flat, np.repeat(starts, len(prefix)), np.tile(prefix, len(lengths)))
                lengths += len(prefix)
        return flat, lengths, unknown

    def decode_target(self, ids: Sequence[Sequence[int]]) -> list[str]:
        """Ids -> detokenized text, cut at the first EOS and ignoring pad/bos."""
        cleaned = []
        for seq in ids:
            seq = list(seq)
            if EOS_ID in seq:
                seq = seq[: seq.index(EOS_ID)]
            cleaned.append([i for i in seq if i not in (PAD_ID, BOS_ID)])
        return self.tgt.decode(cleaned)


def _in_forked_process(work: Callable[[], object]) -> object:
    """``work()`` run in a forked child; its result (or exception) comes back through a pipe."""
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)

    def child() -> None:
        try:
            result = ("ok", work())
        except BaseException as err:  # noqa: BLE001 - handed to the parent, which raises it
            try:
                pickle.dumps(err)
                result = ("error", err)
            except Exception:  # noqa: BLE001 - an exception that does not pickle goes back as text
                result = ("error", RuntimeError(f"{type(err).__name__}: {err}"))
        send.send(result)
        send.close()

    process = context.Process(target=child, daemon=True)
    process.start()
    send.close()
    try:
        status, value = receive.recv()
    except EOFError:
        process.join()
        raise RuntimeError(f"the sentencepiece training process died (exit code {process.exitcode})") from None
    finally:
        receive.close()
    process.join()
    if status == "error":
        raise value
    return value


# -- tokenizing a split in chunks, in parallel ------------------------------------------------------


@dataclass
class EncodedChunk:
    """The ids of a :class:`PairChunk`: flat arrays and per-pair lengths, ``<unk>`` counts per side."""

    src: np.ndarray
    src_lengths: np.ndarray
    tgt: np.ndarray
    tgt_lengths: np.ndarray
    unknown: tuple[int, int]

    def __len__(self) -> int:
        return len(self.src_lengths)


def _encode(tokenizer: Tokenizer, dtype: np.dtype, chunk: PairChunk, num_threads: int = 1) -> EncodedChunk:
    src, tgt = chunk.texts()
    s, s_len, s_unk = tokenizer.encode_flat(src, "source", dtype, num_threads)
    del src
    t, t_len, t_unk = tokenizer.encode_flat(tgt, "target", dtype, num_threads)
    return EncodedChunk(s, s_len, t, t_len, (s_unk, t_unk))


_WORKER: tuple[Tokenizer, np.dtype] | None = None  # a worker process's tokenizer and id dtype


def _start_worker(state: dict, dtype: str) -> None:
    global _WORKER
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops the pool
    _WORKER = Tokenizer.from_state_dict(state), np.dtype(dtype)


def _encode_in_worker(chunk: PairChunk) -> EncodedChunk:
    assert _WORKER is not None
    return _encode(*_WORKER, chunk)


def available_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def encode_chunks(
    tokenizer: Tokenizer, chunks: Iterable[PairChunk], dtype: np.dtype | type, workers: int = 1
) -> Iterator[EncodedChunk]:
    """Encode ``chunks`` in order: in this process (``workers <= 1``; sentencepiece's own threads),
    or in ``workers`` processes that each load the tokenizer once.

    At most two chunks per worker are in flight, so memory stays bounded however long ``chunks``
    is; the caller reads the next chunks while the workers encode. A worker's error (bad UTF-8 in
    a chunk) is raised here, and so is a worker's death (killed for memory): the pool reports it
    instead of waiting for a result that never comes.

    The workers come from a fork server (``spawn`` where there is none), not from ``fork``: this
    process may have threads (torch's, sentencepiece's, a logger's), and a child forked while one of
    them holds a lock can wait on that lock forever.
    """
    if workers <= 1:
        for chunk in chunks:
            yield _encode(tokenizer, np.dtype(dtype), chunk, num_threads=available_cpus())
        return
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload([__name__])  # each worker starts with this module imported
    pool = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=context, initializer=_start_worker,
        initargs=(tokenizer.state_dict(), np.dtype(dtype).str),
    )
    try:
        pending: collections.deque = collections.deque()
        for chunk in chunks:
            pending.append(pool.submit(_encode_in_worker, chunk))
            if len(pending) >= 2 * workers:
                yield _result(pending.popleft())
        while pending:
            yield _result(pending.popleft())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _result(future: concurrent.futures.Future) -> EncodedChunk:
    try:
        return future.result()
    except concurrent.futures.process.BrokenProcessPool:
        raise RuntimeError(
            "a tokenization worker process died (killed for memory?); run again with fewer "
            "data.prepare_workers, or 1 to tokenize in this process"
        ) from None

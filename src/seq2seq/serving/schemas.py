"""What the endpoints accept and answer (the examples are in docs/export-and-serve.md).

Request bodies are checked here by hand rather than by FastAPI's models, so that every bad input
gets a 4xx status and *one* line of JSON, ``{"error": "<what is wrong and what to send>"}``
(FastAPI's default is a list of validation items); any ``Content-Type`` is accepted. Status codes:
400 a body that is not UTF-8 JSON; 413 a body, text or list over the server's limits; 422 a body of
the wrong shape (a missing or unknown field, a wrong type, an empty list, an impossible ``n_best``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from seq2seq.api import CrossAttention, Translation, with_options
from seq2seq.decoding.search import DecodingConfig
from seq2seq.errors import ConfigError

DIGITS = 4  # attention weights are rounded to this many decimals in the JSON


class BadRequest(Exception):
    """A request the server refuses: its HTTP status and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Limits:
    """What one request may hold (``conf/serve.yaml``)."""

    max_text_chars: int = 1000
    max_texts: int = 64
    max_n_best: int = 10

    @property
    def max_body_bytes(self) -> int:
        """The largest body worth reading: every text at its limit, 4 bytes per character, escaped."""
        return 64 * 1024 + self.max_texts * self.max_text_chars * 12


@dataclass(frozen=True)
class TranslateRequest:
    texts: list[str]
    single: bool  # {"text": ...}: answer {"translation": ...}
    options: dict[str, Any]  # decoding options for this request (n_best)


def parse_json(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or :class:`BadRequest`."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadRequest(400, f"the body is not UTF-8 (byte {err.start} is {body[err.start]:#04x}); "
                              "send JSON encoded as UTF-8") from None
    if not text.strip():
        raise BadRequest(400, 'the body is empty; send JSON such as {"text": "A man rides a bike."}')
    try:
        value = json.loads(text)
    except ValueError as err:
        raise BadRequest(400, f"the body is not JSON ({err}); send e.g. {{\"text\": \"A man rides a bike.\"}}") from None
    if not isinstance(value, dict):
        raise BadRequest(422, f"the body is a JSON {_kind(value)}; send an object such as {{\"text\": \"...\"}}")
    return value


def _kind(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _check_fields(body: dict, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise BadRequest(422, f"unknown field(s) {', '.join(map(repr, unknown))}; the fields are {', '.join(allowed)}")


def _check_text(value: Any, where: str, limits: Limits) -> str:
    if not isinstance(value, str):
        raise BadRequest(422, f"{where} must be a string, not a JSON {_kind(value)}")
    if len(value) > limits.max_text_chars:
        raise BadRequest(413, f"{where} has {len(value)} characters; this server takes at most "
                              f"{limits.max_text_chars} per text (max_text_chars)")
    return value


def parse_translate(body: dict[str, Any], limits: Limits, decoding: DecodingConfig) -> TranslateRequest:
    """A ``POST /translate`` body, checked against ``limits`` and the server's ``decoding``."""
    _check_fields(body, ("text", "texts", "n_best"))
    if ("text" in body) == ("texts" in body):
        raise BadRequest(422, 'give either "text" (a string) or "texts" (a list of strings), '
                              f"not {'both' if 'text' in body else 'neither'}")
    if "text" in body:
        texts, single = [_check_text(body["text"], '"text"', limits)], True
    else:
        texts, single = body["texts"], False
        if not isinstance(texts, list):
            raise BadRequest(422, f'"texts" must be a list of strings, not a JSON {_kind(texts)}')
        if not texts:
            raise BadRequest(422, '"texts" is an empty list; give at least one text')
        if len(texts) > limits.max_texts:
            raise BadRequest(413, f'"texts" holds {len(texts)} texts; this server takes at most {limits.max_texts} '
                                  "per request (max_texts): split them over several requests")
        texts = [_check_text(t, f'"texts"[{i}]', limits) for i, t in enumerate(texts)]
    options = {}
    if "n_best" in body:
        n_best = body["n_best"]
        if not isinstance(n_best, int) or isinstance(n_best, bool):
            raise BadRequest(422, f'"n_best" must be a whole number, not a JSON {_kind(n_best)}')
        if n_best > limits.max_n_best:
            raise BadRequest(422, f'"n_best" is {n_best}; this server gives at most {limits.max_n_best} (max_n_best)')
        try:
            with_options(decoding, {"n_best": n_best})
        except ConfigError as err:
            raise BadRequest(422, f"{err} (this server decodes with strategy={decoding.strategy}"
                                  + (f", beam_size={decoding.beam_size})" if decoding.strategy == "beam" else ")")) from None
        if n_best != decoding.n_best:
            options["n_best"] = n_best
    return TranslateRequest(texts, single, options)


def parse_attention(body: dict[str, Any], limits: Limits) -> str:
    """A ``POST /attention`` body: the one sentence to look at."""
    _check_fields(body, ("text",))
    if "text" not in body:
        raise BadRequest(422, 'the "text" field is missing: send {"text": "one sentence"}')
    text = _check_text(body["text"], '"text"', limits)
    if not text.strip():
        raise BadRequest(422, '"text" is blank; give a sentence to translate')
    return text


def translate_response(request: TranslateRequest, results: list[Translation]) -> dict[str, Any]:
    """Each translation's text, or its n-best list of ``{"text", "score"}`` (best first)."""
    translations = [r if isinstance(r, str) else [{"text": text, "score": score} for text, score in r] for r in results]
    return {"translation": translations[0]} if request.single else {"translations": translations}


def _rounded(weights) -> list[list[float]]:
    return [[round(float(w), DIGITS) for w in row] for row in weights.tolist()]


def attention_json(attention: CrossAttention) -> dict[str, Any]:
    """The cross-attention of one sentence pair: words (subwords merged), one (target words ×
    source words) map per decoder layer and their mean, heads averaged; each row sums to 1."""
    return {
        "source": attention.source,
        "translation": attention.translation,
        "source_words": attention.source_words,
        "target_words": attention.target_words,
        "layers": [_rounded(layer) for layer in attention.layers],
        "mean": _rounded(attention.mean),
    }

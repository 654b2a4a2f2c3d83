"""The verifier interface: ``verifier(response, reference) -> Verdict``, plus parallel batch scoring."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable


@dataclass(frozen=True)
class Verdict:
    """A reward and why: ``score`` in [0, 1], what was ``extracted`` from the response, and the ``reason``."""

    score: float
    extracted: str | None
    reason: str

    @property
    def correct(self) -> bool:
        return self.score >= 1.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Verifier:
    """Base class. Subclasses implement ``__call__``; ``batch`` runs many checks in a process pool with a
    per-item timeout (a hung check is killed and scored 0 with reason 'timeout'; no signal.alarm is used, so
    it works from any thread)."""

    name = "verifier"

    def __call__(self, response: str, reference: Any) -> Verdict:  # pragma: no cover - abstract
        raise NotImplementedError

    def batch(self, pairs: Iterable[tuple[str, Any]], workers: int | None = None, timeout: float = 10.0,
              progress: bool = False) -> list[Verdict]:
        from refinery.verifiers.pool import TimeoutPool

        pairs = list(pairs)
        if not pairs:
            return []
        with TimeoutPool(self, workers=workers, timeout=timeout) as pool:
            results = pool.map(pairs, progress=progress)
        return [r if isinstance(r, Verdict) else Verdict(0.0, None, r) for r in results]

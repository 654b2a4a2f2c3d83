"""One progress bar for every step loop: steps done, a few live metrics, time remaining (rich)."""

from __future__ import annotations

from typing import Any


class StepBar:
    """``update(done, metrics)`` shows the listed ``keys`` that are present; a no-op when disabled."""

    def __init__(self, enabled: bool, total: int, start: int, name: str, keys: tuple[str, ...] = ()):
        self.bar, self.keys, self.last = None, keys, {}
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), TimeRemainingColumn())
            self.task = self.bar.add_task(name, total=total, completed=start, info="")
            self.bar.start()

    def update(self, done: int, metrics: dict[str, Any] | None = None) -> None:
        if self.bar is None:
            return
        self.last.update({k: v for k, v in (metrics or {}).items() if k in self.keys and v is not None})
        info = " ".join(f"{k} {self.last[k]:.3f}" for k in self.keys if k in self.last)
        self.bar.update(self.task, completed=done, info=info)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()

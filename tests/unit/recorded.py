"""Recording stand-ins for `actors.metrics`' metrics: Ray's do nothing outside Ray."""

from __future__ import annotations

import pytest

from actors import metrics


class Recorded:
    """A metric that keeps what was recorded: `(value, tags)` each."""

    def __init__(self) -> None:
        self.points: list[tuple[float, dict[str, str]]] = []

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        self.points.append((value, dict(tags or {})))

    observe = set = inc

    def tags(self) -> list[dict[str, str]]:
        return [tags for _, tags in self.points]


def recording(monkeypatch: pytest.MonkeyPatch, *names: str) -> dict[str, Recorded]:
    """Replace the metrics `names` of `actors.metrics` with `Recorded` ones for this test."""
    fakes = {name: Recorded() for name in names}
    for name, fake in fakes.items():
        monkeypatch.setattr(metrics, name, fake)
    return fakes

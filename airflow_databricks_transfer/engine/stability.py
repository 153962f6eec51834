"""Deciding when files stopped changing: the same sizes over N consecutive checks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class StabilityTracker:
    """Counts how many consecutive checks saw the same sizes."""

    def __init__(self, needed: int, state: Mapping[str, Any] | None = None) -> None:
        self.needed = needed
        self.sizes: dict[str, int] = dict((state or {}).get("sizes", {}))
        self.same: int = int((state or {}).get("same", 0))

    def observe(self, sizes: dict[str, int]) -> bool:
        """Record one check; True once the matches were unchanged ``needed`` times in a row."""
        if not sizes:
            self.sizes, self.same = {}, 0
            return False
        self.same = self.same + 1 if sizes == self.sizes else 0
        self.sizes = sizes
        return self.same >= self.needed

    def state(self) -> dict[str, Any]:
        return {"sizes": self.sizes, "same": self.same}

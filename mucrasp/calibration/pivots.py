"""Pivot tokens: where a chain of thought turns ("Step 2:", "Therefore", ...).

Markers are regular expressions matched at word boundaries, case-sensitively (so "So" marks a
conclusion but "also" and "so" inside a clause do not). A trace with no marker gets pivots at
equal intervals, so every sample still contributes to A_pivot. The pivot window spans W tokens
around each pivot: W//2 before it, the pivot, and the rest after, clipped to the response.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DEFAULT_MARKERS: tuple[str, ...] = (
    r"Step \d+:",
    "Therefore",
    "Thus",
    "So",
    "Hence",
    "because",
    "First",
    "Next",
    "Finally",
    "Then",
    "Since",
    "Answer:",
)


@dataclass(frozen=True)
class PivotConfig:
    markers: tuple[str, ...] = DEFAULT_MARKERS
    window: int = 8  # W: tokens in the window around each pivot (the paper tried 4, 8, 16)
    # Without markers: one pivot every this many response tokens (~5% of tokens, as the paper's
    # marker pivots are).
    fallback_interval: int = 20

    def pattern(self) -> re.Pattern[str]:
        return re.compile("|".join(rf"(?<!\w)(?:{m})(?!\w)" for m in self.markers))


def marker_offsets(text: str, config: PivotConfig) -> list[int]:
    """Character offsets where a marker starts."""
    if not config.markers:
        return []
    return [match.start() for match in config.pattern().finditer(text)]


def tokens_at_offsets(token_offsets: list[tuple[int, int]], char_offsets: list[int]) -> list[int]:
    """The token that holds each character offset (or the first token after it, for whitespace)."""
    positions = []
    for char in char_offsets:
        for index, (start, end) in enumerate(token_offsets):
            if end > char:  # tokens are in order: this one holds `char` or follows it
                positions.append(index)
                break
    return sorted(set(positions))


def equal_interval_pivots(n_tokens: int, interval: int) -> list[int]:
    if n_tokens <= 0:
        return []
    interval = max(1, interval)
    first = min(interval // 2, n_tokens - 1)
    return list(range(first, n_tokens, interval))


def window_mask(n_tokens: int, pivots: list[int], window: int) -> torch.Tensor:
    import torch

    """True at tokens inside any pivot window; windows are clipped at both ends of the sequence."""
    mask = torch.zeros(n_tokens, dtype=torch.bool)
    before = window // 2
    for pivot in pivots:
        start = max(0, pivot - before)
        end = min(n_tokens, pivot - before + max(window, 1))
        mask[start:end] = True
    return mask


@dataclass
class PivotResult:
    pivots: list[int]  # token indices within the response
    mask: torch.Tensor  # bool per response token
    from_markers: bool = field(default=True)


def find_pivots(text: str, token_offsets: list[tuple[int, int]], config: PivotConfig) -> PivotResult:
    """Pivot tokens and their window mask for one response, given each token's character span."""
    pivots = tokens_at_offsets(token_offsets, marker_offsets(text, config))
    from_markers = bool(pivots)
    if not pivots:
        pivots = equal_interval_pivots(len(token_offsets), config.fallback_interval)
    return PivotResult(pivots, window_mask(len(token_offsets), pivots, config.window), from_markers)

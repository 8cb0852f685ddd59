"""The final answer of a chain of thought, for accuracy and agreement."""

from __future__ import annotations

import re

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_SENTENCE_END = re.compile(r"\.(?:\s|$)")


def final_answer(response: str) -> str | None:
    """What follows the last "the answer is", else the last number, else the last line (lower-cased)."""
    marker = "the answer is "
    at = response.lower().rfind(marker)
    if at >= 0:
        # A sentence's full stop ends the answer, a decimal point does not ("the answer is 4.5.").
        tail = _SENTENCE_END.split(response[at + len(marker) :])[0].strip()
        return tail.lower() or None
    numbers = _NUMBER.findall(response)
    if numbers:
        return numbers[-1]
    lines = [line.strip().lower() for line in response.splitlines() if line.strip()]
    return lines[-1] if lines else None

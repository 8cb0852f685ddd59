"""Calibration records: one JSON object a line with `image` (a path or null), `prompt`, `response`.

`response` is the chain of thought ending in the answer; only its tokens enter the loss. Relative
image paths resolve against the file's folder. A bad record stops the run with `file:line`: a
silently skipped record would change the scores without anyone noticing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mucrasp.errors import MucraspError

FIELDS = ("image", "prompt", "response")


@dataclass(frozen=True)
class CalibrationRecord:
    image: Path | None
    prompt: str
    response: str
    where: str  # "file:line", for error messages raised later (e.g. while tokenising)


def _check_image(path: Path, where: str) -> None:
    from PIL import Image

    if not path.is_file():
        raise MucraspError(f"{where}: image {path} does not exist")
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as exc:  # PIL raises many types for a damaged file
        raise MucraspError(f"{where}: image {path} cannot be read ({type(exc).__name__})") from None


def _parse_line(line: str, where: str, folder: Path) -> CalibrationRecord:
    try:
        payload = json.loads(line)
    except json.JSONDecodeError as exc:
        raise MucraspError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(payload, dict):
        raise MucraspError(f"{where}: a record must be a JSON object")
    missing = [name for name in FIELDS if name not in payload]
    if missing:
        raise MucraspError(f"{where}: missing field(s) {', '.join(missing)}")
    prompt, response, image = payload["prompt"], payload["response"], payload["image"]
    if not isinstance(prompt, str):
        raise MucraspError(f"{where}: `prompt` must be a string")
    if not isinstance(response, str) or not response.strip():
        raise MucraspError(f"{where}: `response` is empty")
    if image is not None and (not isinstance(image, str) or not image):
        raise MucraspError(f"{where}: `image` must be a path or null")
    image_path = None
    if image is not None:
        image_path = Path(image) if Path(image).is_absolute() else folder / image
        _check_image(image_path, where)
    return CalibrationRecord(image_path, prompt, response, where)


def load_records(path: str | Path, max_samples: int | None = None) -> list[CalibrationRecord]:
    """Read and validate every record (blank lines are allowed); the first bad one raises."""
    path = Path(path)
    if not path.is_file():
        raise MucraspError(f"calibration file {path} does not exist")
    records = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise MucraspError(f"{path}:{number}: not UTF-8 text (byte {exc.start} of the line)") from None
            if not line.strip():
                continue
            records.append(_parse_line(line, f"{path}:{number}", path.parent))
            if max_samples is not None and len(records) >= max_samples:
                break
    if not records:
        raise MucraspError(f"calibration file {path} holds no records")
    return records

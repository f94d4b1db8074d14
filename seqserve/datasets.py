"""Where the JapaneseVowels `.ts` files are: inside the `aeon` wheel, found without importing aeon or torch."""

from __future__ import annotations

import importlib.util
from pathlib import Path

JAPANESE_VOWELS = "JapaneseVowels"


def japanese_vowels_dir() -> Path:
    """The folder holding JapaneseVowels_TRAIN.ts and JapaneseVowels_TEST.ts."""
    spec = importlib.util.find_spec("aeon")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("JapaneseVowels ships with the `aeon` package: pip install -e '.[train]'")
    return Path(spec.origin).parent / "datasets" / "data" / JAPANESE_VOWELS

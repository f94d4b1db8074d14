"""UEA/UCR/TSER archive files on disk: the `aeon` wheel ships a few (BasicMotions, Covid3Month,
JapaneseVowels, PickupGestureWiimoteZ, ...) under aeon/datasets/data/<folder>/<Name>_TRAIN.ts and
_TEST.ts; found here without importing aeon or torch."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

JAPANESE_VOWELS = "JapaneseVowels"
Split = Literal["TRAIN", "TEST"]


def archive_dir() -> Path:
    """The folder of archive data sets inside the installed aeon package."""
    spec = importlib.util.find_spec("aeon")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the archive data sets ship with the `aeon` package: pip install -e '.[train]'")
    return Path(spec.origin).parent / "datasets" / "data"


def archive_names() -> list[str]:
    """Every data set with a TRAIN and a TEST .ts file, e.g. "BasicMotions", "PickupGestureWiimoteZ_eq"."""
    trains = {p.name.removesuffix("_TRAIN.ts") for p in archive_dir().glob("*/*_TRAIN.ts")}
    tests = {p.name.removesuffix("_TEST.ts") for p in archive_dir().glob("*/*_TEST.ts")}
    return sorted(trains & tests)


def archive_path(name: str, split: Split) -> Path:
    """The .ts file of one split of an archive data set, e.g. archive_path("BasicMotions", "TRAIN")."""
    split_name = split.upper()
    if split_name not in ("TRAIN", "TEST"):
        raise ValueError(f"split: {split!r} is not TRAIN or TEST")
    root = archive_dir()
    candidates = [root / name / f"{name}_{split_name}.ts", *sorted(root.glob(f"*/{name}_{split_name}.ts"))]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise FileNotFoundError(f"no archive data set {name!r} in {root} (there are: {', '.join(archive_names())})")
    return found


def japanese_vowels_dir() -> Path:
    """The folder holding JapaneseVowels_TRAIN.ts and JapaneseVowels_TEST.ts."""
    return archive_path(JAPANESE_VOWELS, "TRAIN").parent

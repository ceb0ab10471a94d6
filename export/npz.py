"""Case and kept-study files are written whole or not at all.

The runs that make them resume by skipping the files that exist, so a file cut off by an
interrupt must never appear under its final name (nor under one that `case_*.npz` matches).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def save_npz(path: Path, **arrays) -> None:
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "wb") as f:
        np.savez_compressed(f, **arrays)
    partial.replace(path)

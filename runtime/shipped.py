"""Where the shipped model set and the bundled demo study live."""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "engines"
DEFAULT_STUDY = Path(__file__).resolve().parent / "data" / "default_study.nii.gz"

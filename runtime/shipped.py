"""Where the shipped model set and the bundled demo study live."""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "engines"
DEFAULT_STUDY = Path(__file__).resolve().parent / "data" / "default_study.nii.gz"
# sha256 of engines/MANIFEST.json, which lists the sha256 of every shipped card and model file.
# Written by `python -m export.manifest`; a shipped card edited by hand no longer matches.
SHIPPED_MANIFEST_SHA256 = "f820253974076c7744d1656bbbcc0ae0261c65a2231df33100b717d69ab2e14e"

"""Where the shipped model set and the bundled demo study live."""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent
# An installed wheel carries the models as runtime/engines; a source checkout keeps them in engines/.
INSTALLED_MODEL_DIR = _HERE / "engines"
DEFAULT_MODEL_DIR = (INSTALLED_MODEL_DIR if (INSTALLED_MODEL_DIR / "MANIFEST.json").exists()
                     else _HERE.parent / "engines")
DEFAULT_STUDY = Path(__file__).resolve().parent / "data" / "default_study.nii.gz"
# sha256 of engines/MANIFEST.json, which lists the sha256 of every shipped card and model file.
# Written by `python -m export.manifest`; a shipped card edited by hand no longer matches.
SHIPPED_MANIFEST_SHA256 = "15189d07eef301a3142e5027eb6f0207ba480e697f13ea66efd233cdf3b5856b"

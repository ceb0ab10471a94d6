"""Read one head CT study: a DICOM series folder (or a zip of one, or one enhanced CT file),
NIfTI, MHA or NRRD.

Output is a `Study` (study.py): HU voxels as float32 (z, y, x) plus the exact 4x4 that maps
voxel index (i, j, k) to patient LPS millimetres. Keeping the geometry as one
affine lets gantry tilt (a sheared grid) be carried to the resampler instead
of being silently squashed into an orthogonal image. dicom.py reads DICOM (images.py
each file's planes, series.py the choice of series), volume.py single volume files;
every study is validated before it is returned.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from ..errors import UnreadableInput
from .dicom import read_dicom_file, read_dicom_folder, read_zip
from .images import is_dicom_file
from .study import Study, coverage_warnings, validate_study
from .volume import read_volume_file

__all__ = ["Study", "read_study", "validate_study"]


def read_study(path: str | os.PathLike) -> Study:
    """Read and validate a study; raises an AspectsError subclass on bad input."""
    p = Path(path)
    if not p.exists():
        raise UnreadableInput(f"{p}: no such file or folder")
    if p.is_dir():
        study = read_dicom_folder(p)
    elif p.name.upper() == "DICOMDIR":
        study = read_dicom_folder(p.parent)     # a CD's index: the study is the disc's files beside it
    elif p.name.lower().endswith(".zip"):
        study = read_zip(p)
    elif is_dicom_file(p):
        study = read_dicom_file(p)      # an enhanced CT, or one slice, under any name
    else:
        study = read_volume_file(p)
    validate_study(study)
    return replace(study, warnings=(*study.warnings, *coverage_warnings(study)))

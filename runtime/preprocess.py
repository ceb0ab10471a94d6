"""Resample, skull-strip and window: everything between alignment and the networks.

One function, one record, so the pipeline, the benchmarks, the parity tool and
the training data all prepare a study the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .align import Alignment
from .modelcard import GridSpec
from .read import Study
from .resample import ModelGrid, model_grid, resample, window
from .strip import brain_mask


@dataclass(frozen=True)
class Preprocessed:
    grid: ModelGrid
    hu: np.ndarray = field(repr=False)      # float32 (z, y, x) HU on the model grid
    brain: np.ndarray = field(repr=False)   # bool brain mask on the model grid
    image: np.ndarray = field(repr=False)   # windowed, stripped, in [-1, 1]: the networks' input

    @property
    def brain_ml(self) -> float:
        return float(self.brain.sum()) * self.grid.voxel_ml


def preprocess(study: Study, alignment: Alignment, spec: GridSpec, window_hu: tuple[float, float]) -> Preprocessed:
    grid = model_grid(study, alignment, spec)
    hu = resample(study, alignment, grid)
    return preprocess_grid(hu, grid, window_hu)


def preprocess_grid(hu: np.ndarray, grid: ModelGrid, window_hu: tuple[float, float]) -> Preprocessed:
    """For HU already on a model grid (training data, the parity tool)."""
    brain = brain_mask(hu, grid.spacing[0])
    return Preprocessed(grid=grid, hu=hu, brain=brain, image=window(hu, brain, *window_hu))

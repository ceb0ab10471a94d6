"""DA-Net: per-side ischemia probability for a patch batch.

The networks also output class activation maps; the report's heat map is the
density asymmetry instead (runtime.density), which is what decides on real CT,
so the CAMs are not kept."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .engine import Engine
from .patches import PatchBatch


@dataclass(frozen=True)
class Classification:
    regions: tuple[str, ...]
    probability: np.ndarray     # (B, 2): [left, right] per region
    threshold: float


def classify(engine: Engine, batch: PatchBatch) -> Classification:
    card = engine.card
    if batch.regions != card.regions:
        raise ValueError(f"batch regions {batch.regions} != model regions {card.regions}")
    if batch.pairs is None:
        raise ValueError("the batch's pairs stayed on the GPU; classify them there")
    out = engine.run({card.inputs[0].name: batch.pairs})
    prob = out[card.outputs[0].name]
    return Classification(regions=batch.regions, probability=prob.astype(np.float64), threshold=card.threshold)

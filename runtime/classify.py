"""DA-Net: per-side ischemia probability and class activation maps for a patch batch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .engine import Engine
from .patches import PatchBatch


@dataclass(frozen=True)
class Classification:
    regions: tuple[str, ...]
    probability: np.ndarray     # (B, 2): [left, right] per region
    cam: np.ndarray             # (B, 2, z, y, x) class activation maps, network resolution
    threshold: float


def classify(engine: Engine, batch: PatchBatch) -> Classification:
    card = engine.card
    if batch.regions != card.regions:
        raise ValueError(f"batch regions {batch.regions} != model regions {card.regions}")
    out = engine.run({card.inputs[0].name: batch.pairs})
    prob = out[card.outputs[0].name]
    cam = out[card.outputs[1].name] if len(card.outputs) > 1 else np.zeros((len(batch.regions), 2, 1, 1, 1))
    return Classification(regions=batch.regions, probability=prob.astype(np.float64), cam=cam,
                          threshold=card.threshold)

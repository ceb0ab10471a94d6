"""A folder of real studies with expert reads: the reads file, the label-order file,
and the expert maps turned into runtime.regions label ids.

reads.csv columns: study, subject (heads with several files share one), image,
map (optional expert region map on the image's grid), aspects, side (left, right
or empty), affected (region names joined by ';'). label_order.json: the map's
region names in label order and the first label of each side.
"""

from __future__ import annotations

import csv
import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from runtime.atlas import AtlasSegmenter
from runtime.regions import REGION_NAMES, SIDES, label_id

if TYPE_CHECKING:
    from runtime.cpu import CpuScorer

DEV_SET = Path(__file__).resolve().parent / "datasets" / "dev"


@dataclass(frozen=True)
class Read:
    study: str
    subject: str
    image: Path
    map: Path | None
    aspects: int
    side: str | None
    affected: frozenset[str]

    def expert_map(self) -> Path:
        """The region map, for a read that has one (callers pick those by `map`)."""
        if self.map is None:
            raise ValueError(f"study {self.study} has no expert region map")
        return self.map

    def truth(self) -> np.ndarray:
        """(10 regions, 2 sides [left, right]) affected flags."""
        out = np.zeros((len(REGION_NAMES), len(SIDES)), bool)
        if self.side:
            for name in self.affected:
                out[REGION_NAMES.index(name), SIDES.index(self.side)] = True
        return out


def load_reads(reads_csv: Path, data: Path) -> list[Read]:
    rows = []
    with open(reads_csv, newline="") as f:
        for r in csv.DictReader(f):
            affected = frozenset(a.strip() for a in (r.get("affected") or "").split(";") if a.strip())
            unknown = affected - set(REGION_NAMES)
            if unknown:
                raise SystemExit(f"{reads_csv}: study {r['study']}: unknown regions {sorted(unknown)}")
            side = (r.get("side") or "").strip().lower() or None
            if side not in (None, *SIDES):
                raise SystemExit(f"{reads_csv}: study {r['study']}: side must be left, right or empty")
            if int(r["aspects"]) != 10 - len(affected):
                raise SystemExit(f"{reads_csv}: study {r['study']}: ASPECTS {r['aspects']} != 10 - "
                                 f"{len(affected)} affected regions")
            rows.append(Read(study=r["study"], subject=r.get("subject") or r["study"], image=data / r["image"],
                             map=data / r["map"] if r.get("map") else None, aspects=int(r["aspects"]),
                             side=side, affected=affected))
    return rows


def load_label_order(path: Path) -> dict[int, int]:
    """Expert map label -> runtime.regions label id."""
    d = json.loads(Path(path).read_text())
    names = d["regions"]
    if sorted(names) != sorted(REGION_NAMES):
        raise SystemExit(f"{path}: regions must name each of {REGION_NAMES} once")
    out = {}
    for side, key in (("right", "right_first_label"), ("left", "left_first_label")):
        for i, name in enumerate(names):
            out[int(d[key]) + i] = label_id(REGION_NAMES.index(name), side)
    return out


def read_expert_map(path: Path, order: dict[int, int]) -> np.ndarray:
    """The map as runtime.regions label ids, (z, y, x) on its image's grid."""
    raw = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.int32)
    lut = np.zeros(max(max(order), int(raw.max())) + 1, np.uint8)
    for src, dst in order.items():
        lut[src] = dst
    return lut[np.clip(raw, 0, None)]


def labelled_slices(expert: np.ndarray) -> list[int]:
    """The slices the expert drew on (the two ASPECTS levels): Dice is measured there only."""
    return [z for z in range(expert.shape[0]) if expert[z].any()]


def atlas_folds(reads: list[Read], order: dict[int, int], scorer: CpuScorer, shared: Path) -> dict:
    """Per subject: an atlas from every other subject's expert maps (leave-one-out)."""
    from .atlas import fuse, in_memory_atlas, map_in_template_space, template_image
    template = template_image(shared)
    maps = {r.study: (r.subject, map_in_template_space(r, order, template, scorer.models.grid,
                                                        scorer.models.window))
            for r in reads if r.map is not None}
    return {s: in_memory_atlas(template, fuse([m for subj, m in maps.values() if subj != s]))
            for s in {r.subject for r in reads}}


@contextmanager
def fold_segmenter(scorer: CpuScorer, folds: dict, subject: str):
    """Score with the atlas that never saw `subject`'s map (no change when `folds` is empty); the
    scorer's own segmenter is back afterwards, whatever happened."""
    default = scorer.segmenter
    if folds:
        scorer.segmenter = AtlasSegmenter(folds[subject])
    try:
        yield
    finally:
        scorer.segmenter = default

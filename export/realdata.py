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
from runtime.errors import UnreadableInput, UsageError, named
from runtime.read import Study
from runtime.regions import REGION_NAMES, SIDES, label_id

if TYPE_CHECKING:
    from runtime.cpu import CpuScorer

DEV_SET = Path(__file__).resolve().parent / "datasets" / "dev"
DEV_READS = DEV_SET / "reads.csv"


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


REQUIRED_COLUMNS = ("study", "image", "aspects")


def load_reads(reads_csv: Path, data: Path) -> list[Read]:
    """Every read of the file, each checked, and every image and map found, before any study is
    scored: an evaluation should not stop an hour in on a typo in its last line."""
    try:
        with open(reads_csv, newline="") as f:
            reader = csv.DictReader(f)
            table = list(reader)
            columns = set(reader.fieldnames or ())
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UnreadableInput(f"{reads_csv}: cannot read the reads file ({exc})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise UnreadableInput(f"{reads_csv}: no column {', '.join(missing)} (columns: study, subject, image, "
                              f"map, aspects, side, affected)")
    if not table:
        raise UnreadableInput(f"{reads_csv}: no reads in it")
    rows: list[Read] = []
    for line, r in enumerate(table, start=2):
        read = parse_read(r, data, f"{reads_csv}, line {line}")
        if read.study in {seen.study for seen in rows}:
            raise UnreadableInput(f"{reads_csv}, line {line}: study {read.study} is read twice")
        rows.append(read)
    for read in rows:
        for path in (read.image, read.map):
            if path is not None and not path.exists():
                raise UnreadableInput(f"{reads_csv}: study {read.study}: {path}: no such file or folder")
    return rows


def parse_read(r: dict, data: Path, where: str) -> Read:
    study = (r.get("study") or "").strip()
    if not study or not (r.get("image") or "").strip():
        raise UnreadableInput(f"{where}: a read needs a study name and an image")
    where = f"{where} (study {study})"
    try:
        aspects = int(r["aspects"])
    except (TypeError, ValueError):
        raise UnreadableInput(f"{where}: ASPECTS {r['aspects']!r} is not a whole number") from None
    affected = frozenset(a.strip() for a in (r.get("affected") or "").split(";") if a.strip())
    unknown = affected - set(REGION_NAMES)
    if unknown:
        raise UnreadableInput(f"{where}: unknown regions {sorted(unknown)} (regions: {', '.join(REGION_NAMES)})")
    side = (r.get("side") or "").strip().lower() or None
    if side not in (None, *SIDES):
        raise UnreadableInput(f"{where}: side must be left, right or empty")
    if affected and side is None:
        raise UnreadableInput(f"{where}: affected regions need the side they are on")
    if aspects != 10 - len(affected):
        raise UnreadableInput(f"{where}: ASPECTS {aspects} != 10 - {len(affected)} affected regions")
    return Read(study=study, subject=(r.get("subject") or "").strip() or study, image=data / r["image"].strip(),
                map=data / r["map"].strip() if (r.get("map") or "").strip() else None, aspects=aspects,
                side=side, affected=affected)


def is_dev_set(reads_csv: Path) -> bool:
    """Whether a reads file is the development set's own (the set the cards and its label order name)."""
    return Path(reads_csv).resolve() == DEV_READS


def label_order_file(reads_csv: Path, given: Path | None) -> Path | None:
    """The label-order file to read `reads_csv`'s maps with: the one given, else the development
    set's own, and only for the development set (another dataset's maps may number regions otherwise)."""
    if given is not None:
        return given
    return DEV_SET / "label_order.json" if is_dev_set(reads_csv) else None


def load_label_order(path: Path) -> dict[int, int]:
    """Expert map label -> runtime.regions label id."""
    try:
        d = json.loads(Path(path).read_text())
        names = list(d["regions"])
        firsts = {side: int(d[f"{side}_first_label"]) for side in ("right", "left")}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnreadableInput(f"{path}: cannot read the label-order file ({exc})") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise UnreadableInput(f"{path}: a label-order file holds regions (names in label order), "
                              f"right_first_label and left_first_label ({type(exc).__name__}: {exc})") from None
    if sorted(names) != sorted(REGION_NAMES):
        raise UnreadableInput(f"{path}: regions must name each of {REGION_NAMES} once")
    labels = {side: range(first, first + len(names)) for side, first in firsts.items()}
    if min(firsts.values()) < 1 or set(labels["right"]) & set(labels["left"]):
        raise UnreadableInput(f"{path}: the two sides' labels must be positive and must not overlap "
                              f"(right {labels['right'].start}-{labels['right'].stop - 1}, "
                              f"left {labels['left'].start}-{labels['left'].stop - 1})")
    return {label: label_id(REGION_NAMES.index(name), side)
            for side, first in firsts.items() for label, name in zip(labels[side], names)}


def read_expert_map(path: Path, order: dict[int, int]) -> np.ndarray:
    """The map as runtime.regions label ids, (z, y, x) on its image's grid."""
    try:
        raw = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.int32)
    except RuntimeError as exc:
        raise UnreadableInput(f"{path}: not a readable region map ({str(exc).strip().splitlines()[-1]})") from None
    lut = np.zeros(max(max(order), int(raw.max())) + 1, np.uint8)
    for src, dst in order.items():
        lut[src] = dst
    return lut[np.clip(raw, 0, None)]


def labelled_slices(expert: np.ndarray) -> list[int]:
    """The slices the expert drew on (the two ASPECTS levels): Dice is measured there only."""
    return [z for z in range(expert.shape[0]) if expert[z].any()]


def expert_map_of(read: Read, study: Study, order: dict[int, int]) -> np.ndarray:
    """The read's expert map, which must lie on its image's voxels."""
    expert = read_expert_map(read.expert_map(), order)
    if expert.shape != study.hu.shape:
        raise UnreadableInput(f"{read.map}: {expert.shape[::-1]} voxels, its image {study.hu.shape[::-1]}: "
                              f"a region map must lie on its image's grid")
    return expert


def atlas_folds(reads: list[Read], order: dict[int, int] | None, scorer: CpuScorer, shared: Path) -> dict:
    """Per subject: an atlas from every other subject's expert maps (leave-one-out)."""
    from .atlas import fuse, in_memory_atlas, map_in_template_space, template_image
    if order is None:
        raise UsageError("leave-one-out atlases are built from the expert maps: give their --label-order file")
    if len({r.subject for r in reads if r.map is not None}) < 2:
        raise UsageError("leave-one-out atlases are built from the other subjects' expert maps: "
                         "the reads file needs maps of at least two subjects")
    template = template_image(shared)
    maps = {}
    for r in reads:
        if r.map is not None:
            with named(f"study {r.study}"):
                maps[r.study] = (r.subject, map_in_template_space(r, order, template, scorer.models.grid,
                                                                  scorer.models.window))
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

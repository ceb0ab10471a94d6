"""The one model-card loader. A card (JSON next to each ONNX file) is the contract:
tensor names, shapes and dtypes, the grid, window, crop and threshold. The
runtime reads these numbers from the card, never from code, so a retrained
model with another grid or threshold ships without a code change.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelError
from .shipped import DEFAULT_MODEL_DIR, SHIPPED_MANIFEST_SHA256

ROLES = ("segment_coarse", "segment_fine", "classify_subcortical", "classify_cortical")
MANIFEST = "MANIFEST.json"
ATLAS_ROLE = "segment_atlas"
RULE_ROLE = "classify_density"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str, ...]    # str entries are dynamic axes
    dtype: str


@dataclass(frozen=True)
class GridSpec:
    spacing_mm: tuple[float, float]     # model grid (x, y)
    shape_xy: tuple[int, int]           # model grid (nx, ny)
    min_slice_mm: float                 # thinner slices are averaged into slabs of...
    reformat_slice_mm: float            # ...about this thickness


@dataclass(frozen=True)
class SegmenterPart:
    """What a segmentation network's card adds."""
    input_stride: int                   # model-grid voxels per network voxel in-plane
    z_multiple: int                     # the slice count is padded to a multiple of this
    classes: tuple[str, ...]
    fine_crop_xy: tuple[int, int] = (0, 0)   # segment_fine: in-plane crop (nx, ny) in network voxels

    def to_json(self) -> dict:
        out: dict[str, Any] = {"input_stride": self.input_stride, "z_multiple": self.z_multiple,
                               "classes": list(self.classes)}
        if min(self.fine_crop_xy) > 0:
            out["fine_crop_xy"] = list(self.fine_crop_xy)
        return out


@dataclass(frozen=True)
class ClassifierPart:
    """What a DA-Net card adds."""
    crop: tuple[int, int, int]          # patch (z, y, x) in model-grid voxels
    regions: tuple[str, ...]            # regions this model scores, in batch order
    threshold: float                    # p >= threshold means affected

    def to_json(self) -> dict:
        return {"crop": list(self.crop), "regions": list(self.regions), "threshold": self.threshold}


@dataclass(frozen=True)
class CardDraft:
    """A network's card as training knows it, before export adds the files, hashes and tensor specs
    (export.onnx_export.export_model); `extra` holds architecture, training, provenance, metrics."""
    name: str
    version: str
    role: str
    grid: GridSpec
    window: tuple[float, float]
    part: SegmenterPart | ClassifierPart
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        g = self.grid
        return {"name": self.name, "version": self.version, "role": self.role,
                "grid": {"spacing_mm": list(g.spacing_mm), "shape_xy": list(g.shape_xy),
                         "min_slice_mm": g.min_slice_mm, "reformat_slice_mm": g.reformat_slice_mm},
                "window": {"level": self.window[0], "width": self.window[1]}, **self.extra, **self.part.to_json()}


@dataclass(frozen=True)
class ModelCard:
    path: Path                          # the card itself
    name: str
    version: str
    role: str
    onnx: Path
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    grid: GridSpec
    window: tuple[float, float]         # (level, width) HU
    part: SegmenterPart | ClassifierPart
    onnx_fp16: Path | None = None
    sha256_fp16: str | None = None
    card_sha256: str = ""               # of the card file itself: the report lists what was used
    raw: dict = field(default_factory=dict, repr=False, compare=False)   # provenance, metrics...

    # The role part's fields, read through the card (a segmenter has no crop, a classifier no stride).
    @property
    def input_stride(self) -> int:
        return self.part.input_stride if isinstance(self.part, SegmenterPart) else 1

    @property
    def z_multiple(self) -> int:
        return self.part.z_multiple if isinstance(self.part, SegmenterPart) else 1

    @property
    def fine_crop_xy(self) -> tuple[int, int]:
        return self.part.fine_crop_xy if isinstance(self.part, SegmenterPart) else (0, 0)

    @property
    def crop(self) -> tuple[int, int, int]:
        return self.part.crop if isinstance(self.part, ClassifierPart) else (0, 0, 0)

    @property
    def regions(self) -> tuple[str, ...]:
        return self.part.regions if isinstance(self.part, ClassifierPart) else ()

    @property
    def threshold(self) -> float:
        return self.part.threshold if isinstance(self.part, ClassifierPart) else 0.5


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_card(path: str | Path) -> ModelCard:
    path = Path(path)
    d, digest = _read_json(path)
    try:
        grid = d["grid"]
        card = ModelCard(
            path=path, name=d["name"], version=d["version"], role=d["role"],
            onnx=path.parent / d["onnx"], sha256=d["sha256"],
            inputs=tuple(TensorSpec(t["name"], tuple(t["shape"]), t["dtype"]) for t in d["inputs"]),
            outputs=tuple(TensorSpec(t["name"], tuple(t["shape"]), t["dtype"]) for t in d["outputs"]),
            grid=GridSpec(tuple(grid["spacing_mm"]), tuple(grid["shape_xy"]),
                          float(grid["min_slice_mm"]), float(grid["reformat_slice_mm"])),
            window=(float(d["window"]["level"]), float(d["window"]["width"])), part=_part(d),
            onnx_fp16=path.parent / d["onnx_fp16"] if d.get("onnx_fp16") else None,
            sha256_fp16=d.get("sha256_fp16"), card_sha256=digest, raw=d)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"model card {path} is malformed ({type(exc).__name__}: {exc})") from None
    if card.role not in ROLES:
        raise ModelError(f"model card {path}: unknown role {card.role!r}")
    if card.role == "segment_fine" and min(card.fine_crop_xy) <= 0:
        raise ModelError(f"model card {path}: a fine segmenter needs fine_crop_xy")
    if card.role.startswith("classify") and (min(card.crop) <= 0 or not card.regions):
        raise ModelError(f"model card {path}: a classifier needs crop and regions")
    return card


def _part(d: dict) -> SegmenterPart | ClassifierPart:
    if str(d["role"]).startswith("classify"):
        return ClassifierPart(crop=_ints(d.get("crop", (0, 0, 0)), 3), regions=tuple(d.get("regions", ())),
                              threshold=float(d.get("threshold", 0.5)))
    return SegmenterPart(input_stride=int(d.get("input_stride", 1)), z_multiple=int(d.get("z_multiple", 1)),
                         classes=tuple(d.get("classes", ())), fine_crop_xy=_ints(d.get("fine_crop_xy", (0, 0)), 2))


def _ints(values, n: int):
    out = tuple(int(v) for v in values)
    if len(out) != n:
        raise ValueError(f"expected {n} integers, got {list(values)}")
    return out


@dataclass(frozen=True)
class AtlasCard:
    """The region atlas (runtime.atlas): a template and a label map in one hashed .npz."""
    path: Path
    name: str
    version: str
    role: str
    onnx: Path                          # the hashed artifact (named like the networks' file for verify_file)
    sha256: str
    card_sha256: str = ""
    raw: dict = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class DensityRuleCard:
    """The contralateral density rule (runtime.density, runtime.score): a region is affected when it
    is at least `threshold_hu` darker than its mirror twin, or at least `neighbour_threshold_hu` when
    a neighbouring region on its side is; with `network_probability`, the DA-Net may add a region
    beside a density call (runtime.score.network_calls). No file: the card is the model."""
    path: Path
    name: str
    version: str
    role: str
    threshold_hu: float
    parenchyma_hu: tuple[float, float]
    hypodense_hu: float
    neighbour_threshold_hu: float          # == threshold_hu: no pooling
    erode_mm: float                        # parenchyma eroded in-plane before measuring: off the CSF border
    trough_mm: float = 0.0                 # thin dark troughs (sulci in a thick slab) left out: closing radius
    trough_hu: float = 0.0                 # ... and how much darker than the closing a voxel must be
    network_probability: float | None = None   # None: the DA-Net never decides beside the rule
    network_threshold_hu: float = 0.0
    card_sha256: str = ""
    raw: dict = field(default_factory=dict, repr=False, compare=False)


def load_atlas_card(path: Path) -> AtlasCard:
    d, digest = _read_json(path)
    try:
        return AtlasCard(path=path, name=d["name"], version=d["version"], role=d["role"],
                         onnx=path.parent / d["file"], sha256=d["sha256"], card_sha256=digest, raw=d)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"model card {path} is malformed ({type(exc).__name__}: {exc})") from None


def load_rule_card(path: Path) -> DensityRuleCard:
    d, digest = _read_json(path)
    try:
        card = DensityRuleCard(path=path, name=d["name"], version=d["version"], role=d["role"],
                               threshold_hu=float(d["threshold_hu"]),
                               parenchyma_hu=(float(d["parenchyma_hu"][0]), float(d["parenchyma_hu"][1])),
                               hypodense_hu=float(d["hypodense_hu"]),
                               neighbour_threshold_hu=float(d.get("neighbour_threshold_hu", d["threshold_hu"])),
                               erode_mm=float(d.get("erode_mm", 0.0)),
                               trough_mm=float(d.get("trough_mm", 0.0)), trough_hu=float(d.get("trough_hu", 0.0)),
                               network_probability=_optional_float(d.get("network_probability")),
                               network_threshold_hu=float(d.get("network_threshold_hu", 0.0)),
                               card_sha256=digest, raw=d)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ModelError(f"model card {path} is malformed ({type(exc).__name__}: {exc})") from None
    if not (0.0 < card.neighbour_threshold_hu <= card.threshold_hu < 20.0 and card.hypodense_hu > 0
            and card.parenchyma_hu[0] < card.parenchyma_hu[1] and 0.0 <= card.erode_mm <= 5.0
            and 0.0 <= card.trough_mm <= 10.0 and (card.trough_mm == 0.0 or card.trough_hu > 0.0)
            and (card.network_probability is None or (0.0 < card.network_probability < 1.0
                                                     and 0.0 <= card.network_threshold_hu <= card.threshold_hu))):
        raise ModelError(f"model card {path}: density rule values out of range")
    return card


def _optional_float(v) -> float | None:
    return None if v is None else float(v)


def _read_json(path: Path) -> tuple[dict, str]:
    """The card and the sha256 of its bytes."""
    try:
        data = path.read_bytes()
        d = json.loads(data)
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        return d, hashlib.sha256(data).hexdigest()
    except FileNotFoundError:
        raise ModelError(f"model card {path} not found") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"model card {path} is malformed ({exc})") from None


def verify_file(card: ModelCard | AtlasCard, fp16: bool = False) -> Path:
    """Models are code: refuse a file whose hash is not the one its card was written for."""
    onnx: Path | None = card.onnx
    expected: str | None = card.sha256
    if fp16:
        if not isinstance(card, ModelCard):
            raise ModelError(f"{card.name}: has no fp16 graph")
        onnx, expected = card.onnx_fp16, card.sha256_fp16
    if onnx is None or not onnx.exists():
        raise ModelError(f"{card.name}: model file {onnx} is missing")
    actual = file_sha256(onnx)
    if actual != expected:
        raise ModelError(f"{card.name}: {onnx.name} sha256 {actual[:12]}... does not match its card "
                         f"({str(expected)[:12]}...); the file was changed or corrupted")
    return onnx


@dataclass(frozen=True)
class ModelSet:
    """The models one study needs, the networks checked to share one grid and window. The atlas and
    the density rule are what the runtime scores with on real CT (engines/README.md says why); a
    model folder without them (own-data retraining) scores with the networks alone."""
    segment_coarse: ModelCard
    segment_fine: ModelCard
    classify_subcortical: ModelCard
    classify_cortical: ModelCard
    segment_atlas: AtlasCard | None = None
    classify_density: DensityRuleCard | None = None

    @property
    def grid(self) -> GridSpec:
        return self.segment_coarse.grid

    @property
    def window(self) -> tuple[float, float]:
        return self.segment_coarse.window

    @property
    def cards(self) -> tuple[ModelCard, ...]:
        """The networks."""
        return tuple(getattr(self, r) for r in ROLES)

    @property
    def all_cards(self) -> tuple[ModelCard | AtlasCard | DensityRuleCard, ...]:
        extra = tuple(c for c in (self.segment_atlas, self.classify_density) if c is not None)
        return self.cards + extra


def load_any_card(path: Path) -> ModelCard | AtlasCard | DensityRuleCard:
    role = _read_json(path)[0].get("role")
    if role == ATLAS_ROLE:
        return load_atlas_card(path)
    if role == RULE_ROLE:
        return load_rule_card(path)
    return load_card(path)


def write_card(path: Path, doc: dict) -> ModelCard | AtlasCard | DensityRuleCard:
    """The one card writer: canonical JSON, written atomically, then read back through the loader of
    its role, so a card the runtime would refuse is never left on disk. (The folder's MANIFEST.json is
    rewritten by export.manifest after a batch of cards.)"""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    try:
        load_any_card(tmp)
    except ModelError:
        tmp.unlink()
        raise
    tmp.replace(path)
    return load_any_card(path)


def update_card(path: Path, changes: dict, metrics: dict | None = None) -> ModelCard | AtlasCard | DensityRuleCard:
    """Top-level fields replaced by `changes`, entries of the card's "metrics" by `metrics`."""
    doc = _read_json(Path(path))[0]
    doc.update(changes)
    if metrics:
        doc.setdefault("metrics", {}).update(metrics)
    return write_card(path, doc)


def load_manifest(model_dir: Path) -> dict[str, str]:
    """File name -> sha256 for the folder's cards and model files. The shipped folder's manifest is
    itself pinned by runtime.shipped, so neither a card nor the manifest can be edited unnoticed."""
    path = model_dir / MANIFEST
    if not path.exists():
        raise ModelError(f"{model_dir}: no {MANIFEST} (write it with `python -m export.manifest {model_dir}`)")
    if model_dir.resolve() == DEFAULT_MODEL_DIR.resolve() and file_sha256(path) != SHIPPED_MANIFEST_SHA256:
        raise ModelError(f"{path}: does not match the runtime's pinned hash; the shipped models were changed")
    try:
        files = json.loads(path.read_text())["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{path}: malformed ({exc})") from None
    return {str(k): str(v) for k, v in files.items()}


def load_model_set(model_dir: str | os.PathLike = DEFAULT_MODEL_DIR) -> ModelSet:
    model_dir = Path(model_dir)
    manifest = load_manifest(model_dir)
    cards: dict[str, Any] = {}
    for p in sorted(model_dir.glob("*.json")):
        if p.name == MANIFEST:
            continue
        try:
            role = json.loads(p.read_text()).get("role")
        except (ValueError, OSError):
            continue
        if role in ROLES or role in (ATLAS_ROLE, RULE_ROLE):
            if role in cards:
                raise ModelError(f"{model_dir}: two model cards for role {role} ({cards[role].path.name}, {p.name})")
            card = load_any_card(p)
            if manifest.get(p.name) != card.card_sha256:
                raise ModelError(f"{p}: the card's content does not match {MANIFEST} (edited or corrupted); "
                                 "a threshold or window may have been changed")
            cards[role] = card
    missing = [r for r in ROLES if r not in cards]
    if missing:
        raise ModelError(f"{model_dir}: no model card for {', '.join(missing)}")
    models = ModelSet(**cards)
    for c in models.cards:
        if c.grid != models.grid or c.window != models.window:
            raise ModelError(f"{c.path.name}: grid or window differs from {models.segment_coarse.path.name}")
    return models

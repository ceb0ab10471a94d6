"""Synthetic NCCT head studies with known ASPECTS ground truth.

There is no public labelled NCCT stroke data reachable here, so studies are made
from Rorden's CT template (skull, scalp) + its unsmoothed HU brain, and the
MNI152 ASPECTS region atlas (see ../shared/data/SOURCES.md for where the public
originals live). Each case draws: head size and a smooth non-rigid deformation,
a rigid pose, early ischemic change in chosen regions (hypodensity 1-8 HU, loss
of grey-white contrast, sulcal effacement), confounders (old infarcts, chronic
small-vessel hypodensity, bilateral change), beam-hardening-like bias near the
skull, correlated scanner noise, and a slice thickness of 3-9 mm. An elderly head (`elderly=True`,
for evaluation) also has its own sulci and widened CSF spaces, a little different on each side.

The ground truth follows the paper's rule: a region is affected when the
ischemic core covers >= 10 % of it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from runtime.regions import BRAIN_LABEL, NEIGHBOURS, REGIONS, label_id
from runtime.score import aspects_of

AFFECTED_FRACTION = 0.10     # paper: core volume / region volume >= 10 %
SLAB_SUBSAMPLES = 5


@dataclass(frozen=True)
class Phantom:
    """The canonical head at 1 mm on an LPS-aligned grid (z, y, x), MNI space."""
    hu: np.ndarray           # float32
    labels: np.ndarray       # uint8, runtime.regions convention
    skull_dist: np.ndarray   # float32, mm from the inner table (0 outside the brain)
    index_to_world: np.ndarray


@dataclass(frozen=True)
class Lesion:
    side: str
    regions: tuple[str, ...]
    drop_hu: float           # mean hypodensity of the core
    contrast_loss: float     # 0..1, grey-white differentiation lost
    coverage: tuple[float, ...]   # requested core fraction of each region


@dataclass(frozen=True)
class CaseSpec:
    seed: int
    scale: tuple[float, float, float]
    warp_mm: float
    rotation_deg: tuple[float, float, float]   # about x (pitch), y (roll), z (yaw)
    shift_mm: tuple[float, float, float]
    lesions: tuple[Lesion, ...]
    old_infarct: tuple[str, str] | None        # (side, region) of a chronic, CSF-dense scar
    leukoaraiosis: float                       # HU drop of symmetric periventricular white matter
    noise_hu: float
    bias_hu: float
    slice_mm: float
    inplane_mm: float = 0.45                   # scanner pixel size (0.4-0.5 mm)
    sulcus_mm: float = 0.0                     # half-width of the head's own sulci (0: template only)
    csf_widening_mm: float = 0.0               # ventricles, fissures and cisterns widened by atrophy
    atrophy_asymmetry: float = 0.0             # left widths x (1 + a), right x (1 - a)


@dataclass(frozen=True)
class Case:
    spec: CaseSpec
    affected: dict[str, tuple[bool, bool]]   # region -> (left, right) ground truth
    core_fraction: dict[str, tuple[float, float]]
    hu: np.ndarray             # canonical-space HU with this case's pathology (before pose / warp)
    core: np.ndarray           # canonical-space bool: ischemic core

    @property
    def aspects(self) -> int:
        return int(aspects_of(list(self.affected.values())))


# ---------------------------------------------------------------- phantom

def load_phantom(data_dir: str | Path) -> Phantom:
    """Build the canonical head from ../shared/data/{template,atlas}."""
    data_dir = Path(data_dir)
    ref = sitk.ReadImage(str(data_dir / "template" / "scct_unsmooth_SS_0.01.nii.gz"))
    # Canonical grid: 1 mm, identity LPS direction, covering MNI space.
    size, origin = (181, 217, 182), (-90.0, -91.0, -72.0)      # LPS extent of the template and atlas
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetOrigin(origin)
    grid.SetSpacing((1.0, 1.0, 1.0))

    def onto(img, interp=sitk.sitkLinear, default=0.0):
        return sitk.GetArrayFromImage(sitk.Resample(img, grid, sitk.Transform(), interp, default, sitk.sitkFloat32))

    brain_hu = onto(ref)
    brain = onto(sitk.ReadImage(str(data_dir / "template" / "scct_unsmooth_SS_0.01_Mask.nii.gz"))) > 0.5
    cormack = onto(sitk.ReadImage(str(data_dir / "template" / "scct.nii")), default=0.0)
    head_hu = _cormack_to_hu(cormack)
    bone = head_hu > 150
    head_hu[bone] = 150 + (head_hu[bone] - 150) * 4.0     # the template's skull is smoothed; real bone is denser
    hu = np.where(brain, brain_hu, head_hu).astype(np.float32)

    labels = np.where(brain, BRAIN_LABEL, 0).astype(np.uint8)
    best = np.zeros(labels.shape, np.float32)
    # Smaller regions first, so where atlas masks overlap (insula / M2) the smaller one keeps its voxels.
    order = sorted(range(len(REGIONS)), key=lambda r: _atlas_volume(data_dir, REGIONS[r]))
    for r in order:
        for side, suffix in (("left", "L"), ("right", "R")):
            m = onto(sitk.ReadImage(str(data_dir / "atlas" / f"MNI152_{REGIONS[r].atlas_key}_{suffix}.nii.gz")))
            take = (m > 0.5) & (m > best + 0.25) & brain
            labels[take] = label_id(r, side)
            best = np.maximum(best, np.where(take, m, 0))
    skull_dist = ndimage.distance_transform_edt(brain).astype(np.float32)
    index_to_world = np.diag([1.0, 1.0, 1.0, 1.0])
    index_to_world[:3, 3] = origin
    return Phantom(hu=hu, labels=labels, skull_dist=skull_dist, index_to_world=index_to_world)


def _atlas_volume(data_dir: Path, region) -> float:
    img = sitk.ReadImage(str(data_dir / "atlas" / f"MNI152_{region.atlas_key}_L.nii.gz"))
    return float((sitk.GetArrayViewFromImage(img) > 0.5).sum())


def _cormack_to_hu(c: np.ndarray) -> np.ndarray:
    """Invert Rorden's Cormack units (SOURCES.md): piecewise linear in x = HU + 1024."""
    x = np.where(c <= 900, c, np.where(c <= 11 * 1100 - 9000, (c + 9000) / 11.0, (c - 900) / 2.0))
    return (x - 1024.0).astype(np.float32)


# ---------------------------------------------------------------- case drawing

def draw_spec(seed: int, pose: str = "residual", lesion_rate: float = 0.7, elderly: bool = False) -> CaseSpec:
    """`pose='residual'`: what is left after the runtime aligns (training in model space);
    `pose='scanner'`: a patient on the table (up to 15 degrees, 20 mm).
    `elderly`: the same case (every other field, lesion and the pathology's random streams
    unchanged) in an atrophic head with sulci of its own."""
    rng = np.random.default_rng(seed)
    if pose == "scanner":
        rot = tuple(rng.uniform(-15, 15, 3))
        shift = tuple(rng.uniform(-20, 20, 3))
    else:
        rot = (rng.uniform(-10, 10), rng.uniform(-2, 2), rng.uniform(-2, 2))
        shift = (rng.uniform(-1.5, 1.5), rng.uniform(-4, 4), rng.uniform(-6, 6))
    lesions = []
    if rng.random() < lesion_rate:
        side = str(rng.choice(["left", "right"]))
        lesions.append(draw_lesion(rng, side))
        if rng.random() < 0.1:
            lesions.append(draw_lesion(rng, "right" if side == "left" else "left", max_regions=2))
    old = None
    if rng.random() < 0.15:
        old = (str(rng.choice(["left", "right"])), str(rng.choice([r.name for r in REGIONS])))
    thickness = float(rng.choice([3.0, 4.0, 5.0, 5.0, 5.0, 6.0, 7.5, 9.0]))
    # Keyword arguments are evaluated left to right: inplane_mm stays the last draw, so adding it
    # left every earlier field (and the training data) unchanged.
    spec = CaseSpec(seed=seed, scale=tuple(rng.uniform(0.9, 1.1, 3)), warp_mm=float(rng.uniform(0.5, 3.0)),
                    rotation_deg=rot, shift_mm=shift, lesions=tuple(lesions), old_infarct=old,
                    leukoaraiosis=float(rng.uniform(2, 6)) if rng.random() < 0.2 else 0.0,
                    noise_hu=float(rng.uniform(2.0, 5.0)), bias_hu=float(rng.uniform(0, 8)),
                    slice_mm=thickness, inplane_mm=float(rng.uniform(0.4, 0.5)))
    if not elderly:
        return spec
    # Drawn after every other field, so an elderly case is its young twin plus atrophy.
    return replace(spec, sulcus_mm=float(rng.uniform(0.4, 1.5)), csf_widening_mm=float(rng.uniform(0.0, 3.0)),
                   atrophy_asymmetry=float(rng.uniform(-0.2, 0.2)))


def draw_lesion(rng: np.random.Generator, side: str, max_regions: int = 10) -> Lesion:
    # MCA strokes hit neighbouring regions together: grow from a seed region through a neighbour list.
    n = int(min(max_regions, rng.choice(np.arange(1, 11), p=_REGION_COUNT_P)))
    chosen = [str(rng.choice(list(NEIGHBOURS)))]
    while len(chosen) < n:
        frontier = sorted({x for r in chosen for x in NEIGHBOURS[r]} - set(chosen))
        chosen.append(str(rng.choice(frontier)))
    return Lesion(side=side, regions=tuple(chosen), drop_hu=float(rng.uniform(1.0, 8.0)),
                  contrast_loss=float(rng.uniform(0.2, 0.9)),
                  coverage=tuple(float(rng.uniform(0.15, 1.0)) for _ in chosen))


_REGION_COUNT_P = np.array([18, 14, 11, 9, 8, 8, 8, 8, 8, 8], float) / 100


def make_case(phantom: Phantom, spec: CaseSpec) -> Case:
    """Apply the pathology in canonical space; geometry is applied when rendering."""
    rng = np.random.default_rng(spec.seed + 1)
    hu = phantom.hu.copy()
    brain = phantom.labels > 0
    # Anatomical texture so no two brains share exact intensities.
    hu += np.where(brain, _smooth_noise(rng, hu.shape, 3.0, 1.5), 0).astype(np.float32)
    if spec.sulcus_mm or spec.csf_widening_mm:
        hu = _atrophy(hu, phantom, spec)
    core = np.zeros(hu.shape, bool)
    blob = _smooth_noise(rng, hu.shape, 6.0, 1.0)
    for lesion in spec.lesions:
        for name, cover in zip(lesion.regions, lesion.coverage):
            r = [x.name for x in REGIONS].index(name)
            region = phantom.labels == label_id(r, lesion.side)
            if not region.any():
                continue
            vals = blob[region]
            cut = np.quantile(vals, 1.0 - cover)
            part = region & (blob >= cut)
            # Ischemic core spreads a little beyond the region into neighbouring tissue.
            part = ndimage.binary_dilation(part, iterations=1) & brain
            core |= part
    for lesion in spec.lesions:
        zone = core & _side_mask(hu.shape, phantom, lesion.side)
        if not zone.any():
            continue
        local_mean = ndimage.uniform_filter(hu, 9)
        tissue = zone & (hu > 15)
        hu[tissue] = local_mean[tissue] + (hu[tissue] - local_mean[tissue]) * (1 - lesion.contrast_loss)
        soft = ndimage.gaussian_filter(zone.astype(np.float32), 1.0)
        hu -= lesion.drop_hu * soft
        csf = zone & (hu < 12)                       # sulcal effacement: swollen cortex fills the sulci
        hu[csf] += 0.5 * (22 - hu[csf])
    truth = truth_in_regions(core, phantom.labels)
    if spec.old_infarct:
        side, name = spec.old_infarct
        r = [x.name for x in REGIONS].index(name)
        region = phantom.labels == label_id(r, side)
        scar = region & (blob > np.quantile(blob[region], 0.8)) if region.any() else region
        hu[scar] = 6.0 + rng.normal(0, 1.5, int(scar.sum()))     # CSF-dense, sharp: chronic, not early change
    if spec.leukoaraiosis:
        wm = brain & (phantom.skull_dist > 25) & (phantom.hu > 20) & (phantom.hu < 32)
        hu -= spec.leukoaraiosis * ndimage.gaussian_filter(wm.astype(np.float32), 2.0)
    hu += spec.bias_hu * np.exp(-phantom.skull_dist / 6.0) * brain   # beam hardening next to the inner table
    return Case(spec=spec, affected={k: a for k, (a, _) in truth.items()},
                core_fraction={k: f for k, (_, f) in truth.items()}, hu=hu.astype(np.float32), core=core)


CSF_HU = 7.0
SULCAL_DEPTH_MM = 14.0


def _atrophy(hu: np.ndarray, phantom: Phantom, spec: CaseSpec) -> np.ndarray:
    """Sulci of this head's own and atrophic CSF spaces, as CSF fractions (partial volume at 1 mm).

    The template is an average of many heads, so its cortex has no sulci; every real head has its
    own, and they differ between the sides. Sulci are the zero-sheets of a smooth random field on
    the brain's surface, reaching SULCAL_DEPTH_MM in from it and widest at it.
    The template's ventricles, fissures and cisterns are widened by `csf_widening_mm`. Both widths
    vary smoothly over the head and by side (`atrophy_asymmetry`). Its own random stream leaves
    the rest of the case as drawn."""
    rng = np.random.default_rng(spec.seed + 3)
    brain = phantom.labels > 0
    left = _side_mask(hu.shape, phantom, "left")
    scale = np.where(left, 1 + spec.atrophy_asymmetry, 1 - spec.atrophy_asymmetry)
    scale = scale * np.clip(1 + _smooth_noise(rng, hu.shape, 12.0, 0.3), 0.4, None)
    # The field is read where the voxel's outward line meets the brain's surface, so its zero-sheets
    # run straight in from the surface, as sulci do, and the gyri between them keep their width.
    depth = phantom.skull_dist
    shell = brain & (depth < SULCAL_DEPTH_MM)
    outward = np.stack(np.gradient(ndimage.gaussian_filter(depth, 2.0)))
    outward /= np.linalg.norm(outward, axis=0) + 1e-6
    at_surface = np.stack(np.nonzero(shell)).astype(np.float32) - depth[shell] * outward[:, shell]
    field = np.zeros(hu.shape, np.float32)
    field[shell] = ndimage.map_coordinates(_smooth_noise(rng, hu.shape, 5.0, 1.0), at_surface, order=1)
    slope = np.linalg.norm(np.stack(np.gradient(field)), axis=0) + 1e-3
    width = spec.sulcus_mm * scale * np.clip(1.0 - depth / SULCAL_DEPTH_MM, 0.0, 1.0) ** 0.5
    sulcus = np.clip(width + 0.5 - np.abs(field) / slope, 0.0, 1.0) * np.clip(width / 0.5, 0.0, 1.0) * shell
    spaces = brain & (phantom.hu < 12)
    widened = ndimage.distance_transform_edt(~spaces)
    widening = np.clip(spec.csf_widening_mm * scale - widened + 1.0, 0.0, 1.0)
    fraction = np.where(brain, np.maximum(sulcus, widening), 0.0).astype(np.float32)
    return hu + fraction * (CSF_HU + rng.normal(0, 1.5, hu.shape).astype(np.float32) - hu)


def truth_in_regions(core: np.ndarray, region_labels: np.ndarray) -> dict[str, tuple[tuple, tuple]]:
    """The paper's rule on one region map (runtime.regions ids, the phantom's grid): per region,
    ((left, right) affected, (left, right) core fraction)."""
    out = {}
    for r, reg in enumerate(REGIONS):
        fractions = []
        for side in ("left", "right"):
            region = region_labels == label_id(r, side)
            fractions.append(float((core & region).sum()) / max(1, int(region.sum())))
        out[reg.name] = (tuple(f >= AFFECTED_FRACTION for f in fractions), tuple(fractions))
    return out


def expert_regions(phantom: Phantom, atlas_npz: str | Path) -> np.ndarray:
    """The shipped atlas's expert-convention region map (runtime.atlas) on the phantom's grid: the
    regions as the runtime draws them, for a ground truth in the experts' convention."""
    with np.load(atlas_npz) as d:
        image = sitk.GetImageFromArray(d["labels"].astype(np.uint8))
        image.SetSpacing(tuple(float(v) for v in d["labels_spacing"]))
        image.SetOrigin(tuple(float(v) for v in d["labels_origin"]))
    ref = sitk.Image(phantom.labels.shape[::-1], sitk.sitkUInt8)
    ref.SetOrigin(tuple(float(v) for v in phantom.index_to_world[:3, 3]))
    ref.SetSpacing(tuple(float(v) for v in np.diag(phantom.index_to_world)[:3]))
    out = sitk.Resample(image, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(out)


def _side_mask(shape, phantom: Phantom, side: str) -> np.ndarray:
    x_world = np.arange(shape[2]) + phantom.index_to_world[0, 3]
    sel = x_world > 0 if side == "left" else x_world < 0      # LPS: +x is the patient's left
    return np.broadcast_to(sel[None, None, :], shape)


def _smooth_noise(rng: np.random.Generator, shape, sigma: float, amplitude: float) -> np.ndarray:
    """Band-limited noise, made on a coarse grid and zoomed (cheap at 7 M voxels)."""
    f = 4
    small = rng.normal(0, 1, tuple(int(np.ceil(s / f)) + 1 for s in shape)).astype(np.float32)
    small = ndimage.gaussian_filter(small, sigma / f)
    small *= amplitude / (small.std() + 1e-6)
    big = ndimage.zoom(small, f, order=1)
    return big[: shape[0], : shape[1], : shape[2]]


# ---------------------------------------------------------------- rendering

def case_to_world(spec: CaseSpec) -> np.ndarray:
    """Rigid + scale 4x4 taking canonical (MNI LPS) mm to the rendered study's world mm."""
    ax, ay, az = np.radians(spec.rotation_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    m = np.eye(4)
    m[:3, :3] = rz @ ry @ rx @ np.diag(spec.scale)
    m[:3, 3] = spec.shift_mm
    return m


def render(phantom: Phantom, case: Case, index_to_world: np.ndarray, shape: tuple[int, int, int],
           with_labels: bool = True, noise: bool = True,
           slab_mm: float | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Sample the case onto a grid (z, y, x) given by `index_to_world`; each slice is a slab
    of `slab_mm` (default the case's slice thickness), averaged over sub-slices across it."""
    spec = case.spec
    slab_mm = spec.slice_mm if slab_mm is None else float(slab_mm)
    nz, ny, nx = shape
    world_to_canon = np.linalg.inv(case_to_world(spec))
    canon_to_index = np.linalg.inv(phantom.index_to_world)
    rng = np.random.default_rng(spec.seed + 2)
    warp = _warp_field(rng, spec.warp_mm)
    slab_dir = index_to_world[:3, 2] / np.linalg.norm(index_to_world[:3, 2])
    jj, ii = np.mgrid[0:ny, 0:nx]
    hu = np.zeros(shape, np.float32)
    labels = np.zeros(shape, np.uint8) if with_labels else None
    offsets = (np.arange(SLAB_SUBSAMPLES) - (SLAB_SUBSAMPLES - 1) / 2) * slab_mm / SLAB_SUBSAMPLES
    for k in range(nz):
        ijk = np.stack([ii.ravel(), jj.ravel(), np.full(ii.size, k)], axis=1).astype(float)
        world = ijk @ index_to_world[:3, :3].T + index_to_world[:3, 3]
        acc = np.zeros(ii.size, np.float32)
        for off in offsets:
            idx = _to_phantom_index(world + off * slab_dir, world_to_canon, canon_to_index, warp)
            acc += ndimage.map_coordinates(case.hu, idx, order=1, mode="constant", cval=-1000.0)
        hu[k] = (acc / len(offsets)).reshape(ny, nx)
        if labels is not None:
            idx = _to_phantom_index(world, world_to_canon, canon_to_index, warp)
            labels[k] = ndimage.map_coordinates(phantom.labels, idx, order=0, mode="constant").reshape(ny, nx)
    if noise:
        n = rng.normal(0, 1, shape).astype(np.float32)
        n = ndimage.gaussian_filter(n, (0, 0.7, 0.7))
        hu += spec.noise_hu * n / (n.std() + 1e-6) * (hu > -500)
    return hu, labels


def render_labels(phantom: Phantom, case: Case, index_to_world: np.ndarray,
                  shape: tuple[int, int, int]) -> np.ndarray:
    """Ground-truth region labels (nearest) on any grid, through the case's pose and warp."""
    spec = case.spec
    world_to_canon = np.linalg.inv(case_to_world(spec))
    canon_to_index = np.linalg.inv(phantom.index_to_world)
    warp = _warp_field(np.random.default_rng(spec.seed + 2), spec.warp_mm)
    nz, ny, nx = shape
    jj, ii = np.mgrid[0:ny, 0:nx]
    out = np.zeros(shape, np.uint8)
    for k in range(nz):
        ijk = np.stack([ii.ravel(), jj.ravel(), np.full(ii.size, k)], axis=1).astype(float)
        world = ijk @ index_to_world[:3, :3].T + index_to_world[:3, 3]
        idx = _to_phantom_index(world, world_to_canon, canon_to_index, warp)
        out[k] = ndimage.map_coordinates(phantom.labels, idx, order=0, mode="constant").reshape(ny, nx)
    return out


def _warp_field(rng: np.random.Generator, amplitude_mm: float):
    """Smooth displacement (3 components) on a 10 mm control grid over the canonical head."""
    shape = (20, 24, 20)
    field = rng.normal(0, 1, (3, *shape)).astype(np.float32)
    field = np.stack([ndimage.gaussian_filter(f, 1.5) for f in field])
    field *= amplitude_mm / (np.abs(field).max() + 1e-6)
    return field


def _to_phantom_index(world: np.ndarray, world_to_canon, canon_to_index, warp) -> np.ndarray:
    canon = world @ world_to_canon[:3, :3].T + world_to_canon[:3, 3]
    idx = canon @ canon_to_index[:3, :3].T + canon_to_index[:3, 3]          # (N, 3) as (i, j, k)
    ctrl = idx[:, ::-1] / np.array([181 / 19, 217 / 23, 181 / 19])            # (z, y, x) control-grid coords
    disp = np.stack([ndimage.map_coordinates(w, ctrl.T, order=1, mode="nearest") for w in warp], axis=1)
    return (idx + disp)[:, ::-1].T                                            # (3, N) as (z, y, x)


def scanner_grid(spec: CaseSpec, matrix: int = 512,
                 z_range_mm: tuple[float, float] = (-55.0, 100.0)) -> tuple[np.ndarray, tuple[int, int, int]]:
    """An axial scanner grid centred on the head: `matrix`^2 pixels of `spec.inplane_mm`,
    slices of `spec.slice_mm`."""
    inplane_mm = spec.inplane_mm
    nz = int(round((z_range_mm[1] - z_range_mm[0]) / spec.slice_mm)) + 1
    a = np.diag([inplane_mm, inplane_mm, spec.slice_mm, 1.0])
    # The technologist centres the field of view on the head (whose centre sits ~15 mm behind MNI 0).
    cx, cy = spec.shift_mm[0], spec.shift_mm[1] + 15.0
    a[:3, 3] = (cx - (matrix - 1) / 2 * inplane_mm, cy - (matrix - 1) / 2 * inplane_mm, z_range_mm[0])
    return a, (nz, matrix, matrix)


def write_study(path: str | Path, hu: np.ndarray, index_to_world: np.ndarray) -> None:
    """Write as int16 HU NIfTI/MHA with the grid's spacing, origin and direction."""
    img = sitk.GetImageFromArray(np.clip(np.round(hu), -1024, 3071).astype(np.int16))
    spacing = np.linalg.norm(index_to_world[:3, :3], axis=0)
    img.SetSpacing(spacing.tolist())
    img.SetDirection((index_to_world[:3, :3] / spacing).ravel().tolist())
    img.SetOrigin(index_to_world[:3, 3].tolist())
    sitk.WriteImage(img, str(path), useCompression=True)

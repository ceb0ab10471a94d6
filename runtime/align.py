"""Find the mid-sagittal plane by maximising mirror similarity; no template file needed.

The plane is found in patient LPS millimetres, so the answer does not depend on
the study's voxel grid. Result: one rigid 4x4 from model space (x = patient
left, origin on the mid-sagittal plane at the head's centre) to the study's LPS
space. Yaw and roll are recovered (the two rotations that break left/right
symmetry); pitch cannot be seen by a mirror and is kept as scanned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from scipy import ndimage, optimize

from .read import Study
from .volume import block_mean

N_SAMPLE_POINTS = 40_000
BAND_MM = 25.0
SEED = 20221101


@dataclass(frozen=True)
class Alignment:
    matrix: np.ndarray        # 4x4 rigid: model-space mm -> study LPS mm
    normal: np.ndarray        # unit normal of the mid-sagittal plane, LPS, pointing to patient left
    point: np.ndarray         # a point on the plane (LPS mm): the head centre projected onto it
    yaw_deg: float            # rotation about the patient's S-I axis
    roll_deg: float           # rotation about the patient's A-P axis
    symmetry: float           # normalised cross-correlation of the head with its mirror image, 0..1


@dataclass(frozen=True)
class Level:
    """The study at one working resolution, ready for fast mirror-similarity probes."""
    volume: np.ndarray        # smoothed, clipped intensities (z, y, x)
    world_to_index: np.ndarray
    points: np.ndarray        # (N, 3) LPS mm of sampled head voxels
    values: np.ndarray        # intensities at those points (float64, as every similarity sum)


def align(study: Study, similarity: Similarity | None = None) -> Alignment:
    """Recover the mid-sagittal plane coarse-to-fine (about 2 mm, then 1 mm in-plane).

    Coarser than 2 mm blurs away the roll signal of 5 mm slices and biases roll to zero.
    `similarity` evaluates the mirror similarity of a level (the GPU path passes its own)."""
    similarity = similarity or mirror_similarity
    rng = np.random.default_rng(SEED)
    coarse = _make_level(study, target_mm=2.0, rng=rng)
    centre = coarse.points.mean(axis=0)
    # Yaw is the large unknown on a real scanner table: scan it before the local search.
    yaws = np.radians(np.arange(-40, 41, 4.0))
    start_yaw = max(yaws, key=lambda t: similarity(coarse, centre, (t, 0.0, 0.0)))
    params = _refine(similarity, coarse, centre, (start_yaw, 0.0, 0.0), step=(np.radians(3), np.radians(3), 3.0))
    # Thick slices are smeared along the scanner's z, which is not mirror-symmetric once the head is
    # rolled; the mismatch grows with distance from the plane, so the fine pass looks near it only.
    fine = _make_level(study, target_mm=1.0, rng=rng, band=(_normal(params[0], params[1]),
                                                              centre + params[2] * _normal(params[0], params[1])))
    params = _refine(similarity, fine, centre, params, step=(np.radians(1), np.radians(1), 1.0))
    normal = _normal(params[0], params[1])
    point = centre + params[2] * normal
    return Alignment(matrix=_model_to_study(normal, point), normal=normal, point=point,
                     yaw_deg=float(np.degrees(params[0])), roll_deg=float(np.degrees(params[1])),
                     symmetry=float(similarity(fine, centre, params)))


Similarity = Callable[[Level, np.ndarray, Any], float]


def _normal(yaw: float, roll: float) -> np.ndarray:
    """R_z(yaw) R_y(roll) applied to the patient-left axis."""
    return np.array([np.cos(yaw) * np.cos(roll), np.sin(yaw) * np.cos(roll), -np.sin(roll)])


def _model_to_study(normal: np.ndarray, point: np.ndarray) -> np.ndarray:
    """Rigid frame: x along the plane normal, z as close to the scanner's S-I axis as the plane allows."""
    x = normal / np.linalg.norm(normal)
    z = np.array([0.0, 0.0, 1.0]) - x[2] * x
    z /= np.linalg.norm(z)
    y = np.cross(z, x)
    m = np.eye(4)
    m[:3, :3] = np.column_stack([x, y, z])
    m[:3, 3] = point
    return m


def _make_level(study: Study, target_mm: float, rng: np.random.Generator, band=None) -> Level:
    """`band = (normal, point)`: sample only voxels within BAND_MM of that plane."""
    sx, sy, _ = study.spacing
    f = max(1, int(round(target_mm / min(sx, sy))))
    small = block_mean(study.hu, f)
    # Half-voxel shift: a block mean sits at the centre of its f x f input voxels.
    block = np.array([[f, 0, 0, (f - 1) / 2], [0, f, 0, (f - 1) / 2], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    index_to_world = study.affine @ block
    # Brain, CSF and skull all carry the symmetry; clipping stops bone from dominating it.
    volume = ndimage.gaussian_filter(np.clip(small, 0, 100), sigma=(0, 1, 1)).astype(np.float32)
    head = _head_mask(small)
    ijk = np.argwhere(head)[:, ::-1].astype(float)          # (i, j, k) order
    rot, shift = index_to_world[:3, :3], index_to_world[:3, 3]
    if band is not None:
        # Distance to the plane is affine in the voxel index: select before mapping a million points.
        normal, point = band
        ijk = ijk[np.abs(ijk @ (rot.T @ normal) + (shift - point) @ normal) < BAND_MM]
    if len(ijk) > N_SAMPLE_POINTS:
        ijk = ijk[rng.choice(len(ijk), N_SAMPLE_POINTS, replace=False)]
    points = ijk @ rot.T + shift
    world_to_index = np.linalg.inv(index_to_world)
    level = Level(volume, world_to_index, points, np.empty(0))
    return Level(volume, world_to_index, points, _sample(level, points))


def _head_mask(hu: np.ndarray) -> np.ndarray:
    """Tissue of the largest connected object: the head, not the table or noise."""
    tissue = hu > (-300 if hu.min() < -500 else 10)
    labels, n = ndimage.label(ndimage.binary_opening(tissue, iterations=1))
    if n == 0:
        return tissue
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    return labels == 1 + int(np.argmax(sizes))


def _sample(level: Level, points: np.ndarray) -> np.ndarray:
    """Trilinear samples in float64: the similarity differences the search follows are tiny."""
    ijk = points @ level.world_to_index[:3, :3].T + level.world_to_index[:3, 3]
    return ndimage.map_coordinates(level.volume, ijk[:, ::-1].T, order=1, mode="constant", cval=0.0,
                                   output=np.float64)


def mirror_plane(centre: np.ndarray, params) -> tuple[np.ndarray, float]:
    """Plane (unit normal n, d) with signed distance p . n - d, from (yaw, roll, offset) about `centre`."""
    yaw, roll, offset = params
    n = _normal(yaw, roll)
    return n, float(centre @ n + offset)


def mirror_similarity(level: Level, centre: np.ndarray, params) -> float:
    """NCC of the sampled head voxels with their mirror images through the plane."""
    n, d = mirror_plane(centre, params)
    signed = level.points @ n - d
    mirrored = level.points - 2.0 * signed[:, None] * n
    a = level.values - level.values.mean()
    b = _sample(level, mirrored)
    b = b - b.mean()
    return float(a @ b / (np.sqrt((a @ a) * (b @ b)) + 1e-9))


def _refine(similarity: Similarity, level: Level, centre: np.ndarray, start, step) -> np.ndarray:
    """Powell line searches: Nelder-Mead collapses its simplex onto roll = 0 here because the
    similarity falls off much faster along the plane offset than along roll."""
    scale = np.asarray(step, float)
    res = optimize.minimize(lambda u: -similarity(level, centre, u * scale), np.asarray(start, float) / scale,
                            method="Powell", options={"xtol": 1e-2, "ftol": 1e-6, "maxfev": 600})
    return res.x * scale

"""Find the mid-sagittal plane by maximising mirror similarity; no template file needed.

The plane is found in patient LPS millimetres, so the answer does not depend on
the study's voxel grid. Result: one rigid 4x4 from model space (x = patient
left, origin on the mid-sagittal plane at the head's centre) to the study's LPS
space. Yaw and roll are recovered (the two rotations that break left/right
symmetry); pitch cannot be seen by a mirror and is kept as scanned.

Cost does not grow with the slice count: the study is reduced once to a working
volume of fixed physical resolution (about 1 mm in-plane, thin slices averaged to
about 2.5 mm), and the search follows the exact gradient of the trilinear mirror
similarity (a few dozen probes of 20,000 points instead of hundreds).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .read import Study
from .volume import block_mean

COARSE_POINTS = 10_000       # the coarse level only has to land in the right basin
FINE_POINTS = 20_000
BAND_MM = 25.0
FINE_MM = 1.0                # in-plane working resolution of the fine level; the coarse level is twice that
SLICE_MM = 2.5               # thin slices are averaged to about this thickness first: the cost of a study
                             # no longer grows with its slice count
SEED = 20221101
SCAN_POINTS = 5_000          # the yaw scan's probes use the first of the (randomly drawn) points
MAX_PROBES = 30              # per level; a search takes about 5-15


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
    volume: np.ndarray        # smoothed, clipped intensities (z, y, x), float32
    world_to_index: np.ndarray
    points: np.ndarray        # (N, 3) LPS mm of sampled head voxels
    values: np.ndarray        # volume at those points, centred (float64, as every similarity sum)


def align(study: Study) -> Alignment:
    """Recover the mid-sagittal plane coarse-to-fine (about 2 mm, then 1 mm in-plane).

    Coarser than 2 mm blurs away the roll signal of 5 mm slices and biases roll to zero."""
    rng = np.random.default_rng(SEED)
    work, work_affine = working_volume(study)
    coarse_head = _head_mask(block_mean(work, 2))
    coarse = _make_level(work, work_affine, 2, coarse_head, rng, COARSE_POINTS)
    centre = coarse.points.mean(axis=0)
    # Yaw is the large unknown on a real scanner table: scan it before the local search.
    yaws = np.radians(np.arange(-40, 41, 4.0))
    scan = Level(coarse.volume, coarse.world_to_index, coarse.points[:SCAN_POINTS], coarse.values[:SCAN_POINTS])
    start_yaw = max(yaws, key=lambda t: mirror_similarity(scan, centre, (t, 0.0, 0.0)))
    params = _refine(coarse, centre, (start_yaw, 0.0, 0.0), tol_deg=0.1, tol_mm=0.1)
    # Thick slices are smeared along the scanner's z, which is not mirror-symmetric once the head is
    # rolled; the mismatch grows with distance from the plane, so the fine pass looks near it only.
    normal = _normal(params[0], params[1])
    fine_head = coarse_head.repeat(2, axis=1).repeat(2, axis=2)
    fine = _make_level(work, work_affine, 1, fine_head, rng, FINE_POINTS, band=(normal, centre + params[2] * normal))
    params = _refine(fine, centre, params, tol_deg=0.02, tol_mm=0.02)
    normal = _normal(params[0], params[1])
    point = centre + params[2] * normal
    return Alignment(matrix=_model_to_study(normal, point), normal=normal, point=point,
                     yaw_deg=float(np.degrees(params[0])), roll_deg=float(np.degrees(params[1])),
                     symmetry=mirror_similarity(fine, centre, params))


def working_volume(study: Study) -> tuple[np.ndarray, np.ndarray]:
    """The one pass over the whole study: block means to about FINE_MM in-plane and SLICE_MM
    between slices, clipped to 0-100 HU (brain, CSF and skull all carry the symmetry; the clip
    stops bone from dominating it). Returns the volume and its index -> LPS affine."""
    sx, sy, sz = study.spacing
    f = max(1, int(round(FINE_MM / min(sx, sy))))
    fz = max(1, int(round(SLICE_MM / sz))) if sz > 0 else 1
    work = block_mean(study.hu, f, fz)
    # Half-voxel shifts: a block mean sits at the centre of its input voxels.
    block = np.diag([f, f, fz, 1.0])
    block[:3, 3] = [(f - 1) / 2, (f - 1) / 2, (fz - 1) / 2]
    return np.clip(work, 0, 100, dtype=np.float32), study.affine @ block


def _make_level(work: np.ndarray, work_affine: np.ndarray, f: int, head: np.ndarray, rng: np.random.Generator,
                n_points: int, band=None) -> Level:
    """The working volume reduced in-plane by `f`, smoothed, with up to `n_points` head voxels
    (within BAND_MM of the plane `band = (normal, point)` when given)."""
    small = block_mean(work, f)
    volume = ndimage.gaussian_filter(small.astype(np.float32), sigma=(0, 1, 1))
    block = np.diag([f, f, 1.0, 1.0])
    block[:2, 3] = (f - 1) / 2
    index_to_world = work_affine @ block
    head = head[:, : small.shape[1], : small.shape[2]]
    ijk = np.argwhere(head)[:, ::-1].astype(float)          # (i, j, k) order
    rot, shift = index_to_world[:3, :3], index_to_world[:3, 3]
    if band is not None:
        # Distance to the plane is affine in the voxel index: select before mapping the points.
        normal, point = band
        ijk = ijk[np.abs(ijk @ (rot.T @ normal) + (shift - point) @ normal) < BAND_MM]
    if len(ijk) > n_points:
        ijk = ijk[rng.choice(len(ijk), n_points, replace=False)]
    values = volume[ijk[:, 2].astype(int), ijk[:, 1].astype(int), ijk[:, 0].astype(int)].astype(np.float64)
    return Level(volume, np.linalg.inv(index_to_world), ijk @ rot.T + shift, values - values.mean())


def _head_mask(hu: np.ndarray) -> np.ndarray:
    """Tissue of the largest connected object: the head, not the table or noise (air is 0 here:
    the working volume is clipped)."""
    tissue = hu > 10
    labels, n = ndimage.label(ndimage.binary_opening(tissue, iterations=1))
    if n == 0:
        return tissue
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    return labels == 1 + int(np.argmax(sizes))


def _normal(yaw: float, roll: float) -> np.ndarray:
    """R_z(yaw) R_y(roll) applied to the patient-left axis."""
    return np.array([np.cos(yaw) * np.cos(roll), np.sin(yaw) * np.cos(roll), -np.sin(roll)])


def _normal_derivatives(yaw: float, roll: float) -> np.ndarray:
    """d normal / d(yaw, roll, offset), rows."""
    return np.array([[-np.sin(yaw) * np.cos(roll), np.cos(yaw) * np.cos(roll), 0.0],
                     [-np.cos(yaw) * np.sin(roll), -np.sin(yaw) * np.sin(roll), -np.cos(roll)],
                     [0.0, 0.0, 0.0]])


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


def trilinear(volume: np.ndarray, ijk: np.ndarray, gradient: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Trilinear samples at (N, 3) (i, j, k) indices and their exact gradient d/d(i, j, k). A point
    outside the volume takes the value at the nearest edge (gradient 0 across it): with a constant 0
    outside, points on the first and last slice would fall off a cliff at the slightest roll."""
    nz, ny, nx = volume.shape
    upper = np.array([nx - 1, ny - 1, nz - 1], float)
    c = np.clip(ijk, 0.0, upper)
    base = np.minimum(np.floor(c), np.maximum(upper - 1, 0)).astype(np.int64)
    d = c - base
    i0, j0, k0 = base.T
    i1, j1, k1 = np.minimum(i0 + 1, nx - 1), np.minimum(j0 + 1, ny - 1), np.minimum(k0 + 1, nz - 1)
    flat = volume.ravel()
    sy, sz = nx, nx * ny

    def at(k, j, i):
        return flat[k * sz + j * sy + i]

    v000, v001, v010, v011 = at(k0, j0, i0), at(k0, j0, i1), at(k0, j1, i0), at(k0, j1, i1)
    v100, v101, v110, v111 = at(k1, j0, i0), at(k1, j0, i1), at(k1, j1, i0), at(k1, j1, i1)
    di, dj, dk = d.T
    c00, c01 = v000 + (v001 - v000) * di, v010 + (v011 - v010) * di
    c10, c11 = v100 + (v101 - v100) * di, v110 + (v111 - v110) * di
    c0, c1 = c00 + (c01 - c00) * dj, c10 + (c11 - c10) * dj
    value = c0 + (c1 - c0) * dk
    if not gradient:
        return value, None
    g0 = (v001 - v000) * (1 - dj) + (v011 - v010) * dj
    g1 = (v101 - v100) * (1 - dj) + (v111 - v110) * dj
    grad = np.stack([g0 * (1 - dk) + g1 * dk, (c01 - c00) * (1 - dk) + (c11 - c10) * dk, c1 - c0], axis=1)
    return value, np.where((ijk > 0) & (ijk < upper), grad, 0.0)


def mirror_similarity(level: Level, centre: np.ndarray, params) -> float:
    """NCC of the sampled head voxels with their mirror images through the plane (yaw, roll, offset
    about `centre`)."""
    return _residual(level, centre, params, jacobian=False)[0]


def _residual(level: Level, centre: np.ndarray, params, jacobian: bool):
    """(NCC, r, J): with a and b the centred values at the points and at their mirror images,
    r = a/|a| - b/|b| (|r|^2 = 2 - 2 NCC) and J = d(b/|b|)/d(yaw, roll, offset), (N, 3).

    A point p mirrors to m = p - 2 s n, with s = (p - c).n - offset its signed distance to the plane."""
    yaw, roll, offset = params
    n = _normal(yaw, roll)
    rel = level.points - centre
    s = rel @ n - offset
    mirrored = level.points - 2.0 * s[:, None] * n
    w2i = level.world_to_index
    b, grad_ijk = trilinear(level.volume, mirrored @ w2i[:3, :3].T + w2i[:3, 3], gradient=jacobian)
    a = level.values
    bc = b - b.mean()
    b_norm = np.sqrt(bc @ bc) + 1e-12
    b_hat = bc / b_norm
    a_hat = a / (np.sqrt(a @ a) + 1e-12)
    ncc = float(a_hat @ b_hat)
    if grad_ijk is None:
        return ncc, None, None
    g = grad_ijk @ w2i[:3, :3]                        # d b / d(mirror point), LPS
    dn = _normal_derivatives(yaw, roll)
    ds = np.column_stack([rel @ dn[0], rel @ dn[1], -np.ones(len(s))])     # d s / d params
    db = -2.0 * (ds * (g @ n)[:, None] + s[:, None] * (g @ dn.T))       # d b / d params, (N, 3)
    db -= db.mean(axis=0)
    jac = (db - np.outer(b_hat, b_hat @ db)) / b_norm
    return ncc, a_hat - b_hat, jac


def _refine(level: Level, centre: np.ndarray, start, tol_deg: float, tol_mm: float) -> np.ndarray:
    """Levenberg-Marquardt on the NCC residual: a handful of probes, each one trilinear pass. Stops
    once a step, taken or refused, is below the tolerance. (A generic line search stalls on the
    kinks that trilinear interpolation puts in the similarity.)"""
    tol = np.array([np.radians(tol_deg), np.radians(tol_deg), tol_mm])
    params = np.asarray(start, float)
    ncc, r, jac = _residual(level, centre, params, jacobian=True)
    damping = 1e-3
    for _ in range(MAX_PROBES):
        h = jac.T @ jac
        step = np.linalg.solve(h + damping * np.diag(np.diag(h)), jac.T @ r)
        trial = _residual(level, centre, params + step, jacobian=True)
        if trial[0] > ncc:
            params, (ncc, r, jac), damping = params + step, trial, damping / 3
        else:
            damping *= 10
        if np.all(np.abs(step) < tol):
            break
    return params

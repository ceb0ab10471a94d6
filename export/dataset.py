"""Make training / held-out sets of synthetic cases in the runtime's model space.

Each case is rendered on the model grid at 1 mm in-plane (the segmentation
networks' resolution) after a residual pose (what the runtime's alignment leaves),
then preprocessed by the runtime's own skull strip and window, and its DA-Net
patch pairs are cut at 0.5 mm by the runtime's own batch builder, so training
sees exactly what inference sees. One compressed .npz per case.

    python -m export.dataset --shared ../shared/data --out build/data/train --seeds 0:300
    python -m export.dataset --elderly --out build/data/train_elderly --seeds 260:360
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
from functools import partial
from pathlib import Path

import numpy as np

from runtime.cli import at_least
from runtime.errors import exit_code_of
from runtime.patches import build_batch, host_pairs
from runtime.preprocess import preprocess_grid
from runtime.regions import REGION_NAMES
from runtime.resample import ModelGrid, slab_plan
from runtime.volume import block_mean

from . import synth
from .atlas import shared_data
from .config import CLASSIFIER_CROP, FINE_STRIDE, GRID_SHAPE_XY, GRID_SPACING_MM, WINDOW, grid_spec
from .npz import save_npz

_PHANTOM: synth.Phantom | None = None
GRID_SPEC = grid_spec()


def model_space_grid(spec: synth.CaseSpec, phantom_centre: np.ndarray, stride: int) -> tuple[np.ndarray, tuple]:
    """Model grid at `stride` x the runtime's in-plane spacing; slices as the runtime would make them."""
    sx, sy = GRID_SPACING_MM[0] * stride, GRID_SPACING_MM[1] * stride
    nx, ny = GRID_SHAPE_XY[0] // stride, GRID_SHAPE_XY[1] // stride
    _, sz = slab_plan(spec.slice_mm, GRID_SPEC)
    phase = (spec.seed * 0.37) % 1.0 * sz
    z_lo, z_hi = -45.0 + phase, 85.0
    nz = int((z_hi - z_lo) // sz) + 1
    a = np.diag([sx, sy, sz, 1.0])
    a[:3, 3] = (-(nx - 1) / 2 * sx + phantom_centre[0], -(ny - 1) / 2 * sy + phantom_centre[1], z_lo)
    return a, (nz, ny, nx)


def phantom_centre(phantom: synth.Phantom) -> np.ndarray:
    """Head centroid in canonical mm, x forced onto the midline: the model-space origin."""
    ijk = np.argwhere(phantom.hu > -300)[:, ::-1].mean(axis=0)
    c = phantom.index_to_world[:3, :3] @ ijk + phantom.index_to_world[:3, 3]
    return np.array([0.0, c[1], c[2]])


def make_one(seed: int, shared: Path, out_dir: Path, elderly: bool = False) -> dict:
    """`elderly`: the case in an atrophic head with sulci of its own (synth.draw_spec)."""
    global _PHANTOM
    if _PHANTOM is None:
        _PHANTOM = synth.load_phantom(shared)
    phantom = _PHANTOM
    spec = synth.draw_spec(seed, pose="residual", elderly=elderly)
    case = synth.make_case(phantom, spec)
    a1, shape1 = model_space_grid(spec, phantom_centre(phantom), FINE_STRIDE)
    hu1, labels1 = synth.render(phantom, case, a1, shape1, noise=False, slab_mm=a1[2, 2])
    if labels1 is None:
        raise ValueError("synth.render drew no labels")
    # Core mask in model space, for the CAM attention loss.
    core1, _ = synth.render(phantom, synth.Case(spec, case.affected, case.core_fraction,
                                                case.core.astype(np.float32), case.core), a1, shape1,
                            with_labels=False, noise=False, slab_mm=a1[2, 2])
    rng = np.random.default_rng(seed + 3)
    # 0.5 mm model grid: what the runtime windows and crops. Noise is added at that resolution.
    hu05 = hu1.repeat(2, axis=1).repeat(2, axis=2)
    hu05 += _noise(rng, hu05.shape, spec.noise_hu) * (hu05 > -500)
    grid05 = ModelGrid(shape=hu05.shape, spacing=(*GRID_SPACING_MM, float(a1[2, 2])), origin=(0.0, 0.0, 0.0), slab=1)
    image05 = preprocess_grid(hu05, grid05, WINDOW).image
    labels05 = labels1.repeat(2, axis=1).repeat(2, axis=2)
    hypo05 = ((core1 > 0.5) & (hu1 >= 0) & (hu1 < 70)).repeat(2, axis=1).repeat(2, axis=2)
    pairs = host_pairs(build_batch(image05, labels05, REGION_NAMES, CLASSIFIER_CROP))
    hypo = host_pairs(build_batch(hypo05.astype(np.float32), labels05, REGION_NAMES, CLASSIFIER_CROP))
    image1 = block_mean(image05, 2)
    affected = np.array([case.affected[r] for r in REGION_NAMES], bool)          # (10, 2) left, right
    save_npz(
        out_dir / f"case_{seed:05d}.npz", image1=image1.astype(np.float16), labels1=labels1,
        pairs=pairs.astype(np.float16), hypo=(hypo[:, :, 0] > 0.5), affected=affected,
        fractions=np.array([case.core_fraction[r] for r in REGION_NAMES], np.float32))
    return {"seed": seed, "aspects": case.aspects, "affected": affected.sum(axis=0).tolist(),
            "slice_mm": spec.slice_mm, "elderly": elderly}


def _noise(rng, shape, sigma):
    from scipy import ndimage
    n = ndimage.gaussian_filter(rng.normal(0, 1, shape).astype(np.float32), (0, 0.7, 0.7))
    return sigma * n / (n.std() + 1e-6)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", type=Path, default=Path("../shared/data"), help="template + atlas folder")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seeds", type=seed_range, default="0:300", help="start:stop")
    p.add_argument("--workers", type=at_least(1), default=2)
    p.add_argument("--elderly", action="store_true", help="atrophic heads with sulci of their own")
    args = p.parse_args(argv)
    start, stop = args.seeds
    shared_data(args.shared)
    args.out.mkdir(parents=True, exist_ok=True)
    todo = [s for s in range(start, stop) if not (args.out / f"case_{s:05d}.npz").exists()]
    work = partial(make_one, shared=args.shared, out_dir=args.out, elderly=args.elderly)
    with mp.get_context("fork").Pool(args.workers) as pool:
        for i, info in enumerate(pool.imap_unordered(work, todo)):
            log_case(args.out, info, i, len(todo))


def seed_range(text: str) -> tuple[int, int]:
    """--seeds start:stop, as argparse checks it (a bad value is a usage error, not a traceback)."""
    try:
        start, stop = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not start:stop (e.g. 0:300)") from None
    if not 0 <= start < stop:
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 <= start < stop")
    return start, stop


def log_case(out_dir: Path, info: dict, i: int, total: int) -> None:
    """One line per case made in out_dir/index.jsonl (what it holds), progress every 20 cases."""
    with open(out_dir / "index.jsonl", "a") as f:
        f.write(json.dumps(info) + "\n")
    if i % 20 == 0:
        print(f"{i + 1}/{total} cases", flush=True)


if __name__ == "__main__":
    sys.exit(exit_code_of(main))

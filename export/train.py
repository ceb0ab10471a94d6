"""Train the four shipped networks reproducibly and export them to engines/.

    python -m export.train segment  --data build/data/train --out engines
    python -m export.train classify --data build/data/train --out engines

Seeds are fixed, the full config is logged next to the run and copied into the
model card. The defaults are phase 1 of the shipped models; `--continue` phases follow it
(export/train_all.sh runs all three, about 2.5 hours on a 2-core CPU). `--paper-size` builds
the published widths for GPU training.

Own data: the same commands train on any folder of case_*.npz files laid out as
export.dataset writes them; `python -m export.ingest` converts a folder of NIfTI
images, region label maps and per-region labels into that layout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from runtime.cli import at_least, number_from
from runtime.errors import ModelError, UnreadableInput, UsageError, exit_code_of
from runtime.modelcard import CardDraft, ClassifierPart, ModelCard, SegmenterPart
from runtime.regions import (
    CORTICAL,
    REGION_LABELS,
    REGION_NAMES,
    SEG_CLASSES,
    SUBCORTICAL,
    classes_from_labels,
    is_region,
    labels_from_classes,
)
from runtime.segment import fine_window
from runtime.volume import block_mean, pad_z

from .config import (
    CLASSIFIER_CROP,
    COARSE_STRIDE,
    FINE_CROP_XY,
    FINE_STRIDE,
    GRID_SHAPE_XY,
    SEED,
    WINDOW,
    grid_spec,
)
from .metrics import best_threshold, dice
from .networks import DANET_CPU, DANET_PAPER, VBNET_CPU, VBNET_PAPER, DANet, VBNet, parameter_count
from .onnx_export import export_model

VERSION = "0.1.0"
CLASS_WEIGHTS = torch.tensor([0.1, 0.3] + [1.0] * 10)      # background, brain, the 10 regions
CHECKPOINT_DIR = "pytorch"            # under the output folder (engines/pytorch)
PROVENANCE = ("Trained only on synthetic NCCT studies made by export.synth from Rorden's CT template "
              "(BSD-2) and the MNI152 ASPECTS region atlas of AnotherMak/aspects-on-cta (MIT); "
              "ground truth by the paper's rule (core >= 10% of a region). Not for clinical use.")


@dataclass(frozen=True)
class TrainConfig:
    seed: int = SEED
    iterations: int = 900
    lr: float = 2e-3
    lr_decay: float = 0.7          # the paper's x0.7 step schedule, stepped 6 times over the run
    batch: int = 2
    threads: int = 2
    val_fraction: float = 0.1
    hu_offset: float = 0.0         # DA-Net: each pair's CT numbers shifted by up to this many HU


def set_seed(seed: int, threads: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)


def load_cases(folder: Path, keys: tuple[str, ...]) -> list[dict]:
    files = sorted(folder.glob("case_*.npz"))
    if not files:
        raise UnreadableInput(f"{folder}: no case_*.npz files (make them with python -m export.dataset)")
    out = []
    for f in files:
        with np.load(f) as d:
            out.append({k: d[k] for k in keys} | {"name": f.stem})
    return out


def split(cases: list, fraction: float, seed: int) -> tuple[list, list]:
    idx = np.random.default_rng(seed).permutation(len(cases))
    n_val = max(1, int(len(cases) * fraction))
    return [cases[i] for i in idx[n_val:]], [cases[i] for i in idx[:n_val]]


def _optimiser(model: VBNet | DANet, cfg: TrainConfig
               ) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.StepLR, np.random.Generator]:
    """Adam with six decay steps per phase, and the phase's sample stream: seeded by the phase (not the
    run), so a phase resumed with --continue draws fresh batches rather than repeating the last."""
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, cfg.iterations // 6), gamma=cfg.lr_decay)
    return opt, sched, np.random.default_rng(cfg.seed)


def _log(run_log: Path, record: dict) -> None:
    with open(run_log, "a") as f:
        f.write(json.dumps(record) + "\n")


def _checkpoint(model: VBNet | DANet, out_dir: Path, stem: str, history: list[dict]) -> dict:
    """PyTorch weights beside the ONNX files: the GPU benchmark's reference models and the start
    of a continued training phase. `history` is every phase that led to them, oldest first."""
    path = out_dir / CHECKPOINT_DIR / f"{stem}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    # Whole or not at all: a kill while saving must not cost the weights every later phase starts from.
    partial = path.with_name(f".{path.name}.partial")
    torch.save({"config": model.cfg.to_dict(), "state_dict": model.state_dict(), "training": history}, partial)
    partial.replace(path)
    return {"file": f"{CHECKPOINT_DIR}/{path.name}", "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def _initial_weights(model: VBNet | DANet, init: Path | None) -> list[dict]:
    """Continue from a checkpoint of the same architecture; returns its training history."""
    if init is None:
        return []
    ck = torch.load(init, map_location="cpu", weights_only=True)
    if ck["config"] != model.cfg.to_dict():
        raise ModelError(f"{init}: architecture {ck['config']} differs from {model.cfg.to_dict()}")
    model.load_state_dict(ck["state_dict"])
    digest = hashlib.sha256(init.read_bytes()).hexdigest()
    return [*ck.get("training", []), {"continued_from": str(init), "sha256": digest}]


def _phase_seed(cfg: TrainConfig, history: list[dict]) -> TrainConfig:
    """Each continued phase draws its own sample sequence: seed + number of earlier phases."""
    phases = sum("iterations" in h for h in history)
    if phases:
        cfg = replace(cfg, seed=SEED + phases)
        set_seed(cfg.seed, cfg.threads)
    return cfg


def _phase(cfg: TrainConfig, n_train: int) -> dict:
    return {**asdict(cfg), "cases": n_train, "torch": str(torch.__version__)}


def _draft(role: str, name: str, part: SegmenterPart | ClassifierPart, cfg: TrainConfig, arch: dict,
           n_params: int, n_train: int, history: list[dict], provenance: str = PROVENANCE, **extra) -> CardDraft:
    """The card record of a trained network; export adds the files, hashes and tensor specs."""
    return CardDraft(name=name, version=VERSION, role=role, grid=grid_spec(), window=WINDOW, part=part,
                     extra={"architecture": arch, "parameters": n_params,
                            "training": {**_phase(cfg, n_train), "earlier_phases": history},
                            "provenance": provenance, **extra})


# ---------------------------------------------------------------- segmentation

def coarse_sample(case: dict, rng: np.random.Generator | None, z_multiple: int, with_position: bool = False):
    """Whole head at the coarse stride. With `with_position`, also each column's x index and the
    grid centre, to side the predicted classes as the runtime does."""
    f = COARSE_STRIDE // FINE_STRIDE
    img = block_mean(case["image1"].astype(np.float32), f)
    nx = case["image1"].shape[2]
    lab = case["labels1"][:, f // 2::f, f // 2::f]
    out = pad_z(img, z_multiple, -1.0), pad_z(lab, z_multiple, 0)
    if with_position:
        return (*out, np.arange(nx // f)[None, None, :], (nx // f - 1) / 2)
    return out


def fine_box(labels1: np.ndarray, rng: np.random.Generator | None, jitter: int = 8):
    """The fine crop the runtime takes around the regions (runtime.segment.fine_window, at the fine
    network's own resolution), with optional jitter of the region box."""
    zz, yy, xx = np.nonzero(is_region(labels1))
    box = [zz.min(), zz.max(), yy.min(), yy.max(), xx.min(), xx.max()]
    if rng is not None:
        dy, dx = (int(v) for v in rng.integers(-jitter, jitter + 1, 2))
        box = [box[0] - int(rng.integers(0, 2)), box[1] + int(rng.integers(0, 2)),
               box[2] + dy, box[3] + dy, box[4] + dx, box[5] + dx]
    box[0], box[1] = max(0, box[0]), min(labels1.shape[0] - 1, box[1])
    z0, z1, y0, x0 = fine_window(box, labels1.shape, 1, 1, FINE_CROP_XY)
    fx, fy = FINE_CROP_XY
    return slice(z0, z1), slice(y0, y0 + fy), slice(x0, x0 + fx)


def fine_sample(case: dict, rng: np.random.Generator | None, z_multiple: int, with_position: bool = False):
    box = fine_box(case["labels1"], rng)
    img = case["image1"][box].astype(np.float32)
    lab = case["labels1"][box]
    out = pad_z(img, z_multiple, -1.0), pad_z(lab, z_multiple, 0)
    if with_position:
        return (*out, np.arange(box[2].start, box[2].stop)[None, None, :], (case["labels1"].shape[2] - 1) / 2)
    return out


def dice_per_class(pred: np.ndarray, truth: np.ndarray, classes=REGION_LABELS) -> np.ndarray:
    return np.array([dice(pred, truth, c) for c in classes])


def train_segmenter(stage: str, cases: list[dict], val: list[dict], cfg: TrainConfig, paper: bool,
                    out_dir: Path, run_log: Path, init: Path | None = None, provenance: str = PROVENANCE
                    ) -> ModelCard:
    set_seed(cfg.seed, cfg.threads)
    arch = VBNET_PAPER if paper else VBNET_CPU
    model = VBNet(arch)
    history = _initial_weights(model, init)
    cfg = _phase_seed(cfg, history)
    sample = coarse_sample if stage == "coarse" else fine_sample
    opt, sched, rng = _optimiser(model, cfg)
    t0 = time.time()
    for it in range(cfg.iterations):
        model.train()
        xs, ys = zip(*(sample(cases[i], rng, arch.z_multiple) for i in rng.integers(0, len(cases), cfg.batch)))
        nz = max(x.shape[0] for x in xs)
        x = torch.from_numpy(np.stack([pad_z(v, nz, -1.0)[:nz] for v in xs]))[:, None]
        y = torch.from_numpy(np.stack([pad_z(v, nz, 0)[:nz] for v in ys]).astype(np.int64))
        y = torch.from_numpy(classes_from_labels(y.numpy()).astype(np.int64))
        if rng.random() < 0.5:    # mirror augmentation (classes carry no side)
            x, y = x.flip(-1), y.flip(-1)
        x = x * float(rng.uniform(0.9, 1.1)) + float(rng.uniform(-0.05, 0.05))
        logits = model(x)
        prob = logits.softmax(1)
        onehot = F.one_hot(y, len(SEG_CLASSES)).permute(0, 4, 1, 2, 3).float()
        inter = (prob * onehot).sum((0, 2, 3, 4))
        dice = (2 * inter + 1) / (prob.sum((0, 2, 3, 4)) + onehot.sum((0, 2, 3, 4)) + 1)
        # Class-weighted CE: background and brain dominate the voxels; without weights the small
        # regions take thousands of steps to appear at all.
        loss = F.cross_entropy(logits, y, weight=CLASS_WEIGHTS) + (1 - dice[1:]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if it % 50 == 0 or it == cfg.iterations - 1:
            _log(run_log, {"stage": stage, "it": it, "loss": round(loss.item(), 4), "s": round(time.time() - t0, 1)})
    model.eval()
    dices = []
    with torch.no_grad():
        for case in val:
            x, y, x_index, centre = sample(case, None, arch.z_multiple, with_position=True)
            classes = model(torch.from_numpy(x)[None, None]).argmax(1)[0].numpy()
            dices.append(dice_per_class(labels_from_classes(classes, x_index, centre), y))
    dice = np.nanmean(np.array(dices), axis=0)
    stride = COARSE_STRIDE if stage == "coarse" else FINE_STRIDE
    if stage == "fine":
        example = torch.zeros(1, 1, 12, FINE_CROP_XY[1], FINE_CROP_XY[0])
    else:
        example = torch.zeros(1, 1, 28, GRID_SHAPE_XY[1] // stride, GRID_SHAPE_XY[0] // stride)
    part = SegmenterPart(input_stride=stride, z_multiple=arch.z_multiple, classes=SEG_CLASSES,
                         fine_crop_xy=FINE_CROP_XY if stage == "fine" else (0, 0))
    draft = _draft(f"segment_{stage}", f"aspects-vbnet-{stage}", part, cfg, arch.to_dict(), parameter_count(model),
                   len(cases), history, provenance,
                   side_rule="x index above the grid centre (the mid-sagittal plane) is the patient's left",
                   metrics={"validation_cases": len(val), "dice_mean_regions": round(float(np.nanmean(dice)), 4),
                            "dice_per_label": {f"{i + 1}": round(float(d), 4) for i, d in enumerate(dice)}},
                   pytorch=_checkpoint(model, out_dir, f"vbnet_{stage}", [*history, _phase(cfg, len(cases))]))
    return export_model(model, example, out_dir, f"vbnet_{stage}", "image", ["probabilities"],
                        {"image": {2: "slices"}, "probabilities": {2: "slices"}}, draft, seed=cfg.seed)


# ---------------------------------------------------------------- classification

def classifier_batch(cases: list[dict], region_idx: tuple[int, ...], rng: np.random.Generator, n: int):
    pick = [(int(rng.integers(0, len(cases))), int(rng.choice(region_idx))) for _ in range(n)]
    x = np.stack([cases[c]["pairs"][r] for c, r in pick]).astype(np.float32)      # (n, 2, 2, z, y, x)
    hypo = np.stack([cases[c]["hypo"][r] for c, r in pick]).astype(np.float32)    # (n, 2, z, y, x)
    y = np.stack([cases[c]["affected"][r] for c, r in pick]).astype(np.float32)   # (n, 2)
    return x, hypo, y


def shift_hu(ct: torch.Tensor, brain: torch.Tensor, offsets_hu: np.ndarray) -> torch.Tensor:
    """Windowed crop pairs (n, side, z, y, x) with each pair's CT numbers moved by its own offset, both
    sides alike. Scanners' CT numbers differ by a few HU (water within +-4 HU); without this the
    DA-Net learnt the development heads' absolute level with their asymmetry, and lost or doubled its
    calls on a head read 2 HU higher or lower (engines/README, "CT numbers of another scanner")."""
    step = torch.from_numpy(np.asarray(offsets_hu, np.float32) * (2.0 / WINDOW[1])).view(-1, 1, 1, 1, 1)
    return torch.where(brain, (ct + step).clamp(-1.0, 1.0), ct)


def danet_losses(prob, cam, y, hypo, pos_weight: float):
    """Class-balanced BCE + CAM attention (weighted MSE to the hypodense core) + the rank loss.
    The parts come back as detached tensors, read only when a step is logged: reading them every
    step would wait for the device on every step of a GPU training."""
    w = torch.where(y > 0.5, torch.full_like(y, pos_weight), torch.ones_like(y))
    bce = F.binary_cross_entropy(prob.clamp(1e-6, 1 - 1e-6), y, weight=w)
    target = F.adaptive_avg_pool3d(hypo, cam.shape[-3:])
    cam_w = 1.0 + 4.0 * (target > 0.05)
    attention = (cam_w * (torch.sigmoid(cam) - target) ** 2).mean()
    one_side = (y[:, 0] != y[:, 1])
    aff = torch.where(y[:, 0] > 0.5, prob[:, 0], prob[:, 1])
    other = torch.where(y[:, 0] > 0.5, prob[:, 1], prob[:, 0])
    rank_pos = F.relu(0.5 - (aff - other))[one_side].mean() if one_side.any() else prob.sum() * 0
    neg = (y == 0).all(dim=1)
    rank_neg = F.relu(prob[neg] - 0.2).mean() if neg.any() else prob.sum() * 0
    return bce + 0.5 * attention + 0.5 * (rank_pos + rank_neg), {"bce": bce.detach(), "cam": attention.detach()}


def train_classifier(group: str, cases: list[dict], val: list[dict], cfg: TrainConfig, paper: bool,
                     out_dir: Path, run_log: Path, init: Path | None = None, provenance: str = PROVENANCE
                     ) -> ModelCard:
    set_seed(cfg.seed, cfg.threads)
    region_idx = CORTICAL if group == "cortical" else SUBCORTICAL
    arch = DANET_PAPER if paper else DANET_CPU
    model = DANet(arch)
    history = _initial_weights(model, init)
    cfg = _phase_seed(cfg, history)
    labels = np.concatenate([c["affected"][list(region_idx)].ravel() for c in cases])
    pos_weight = float((labels == 0).sum() / max(1, (labels == 1).sum()))
    opt, sched, rng = _optimiser(model, cfg)
    t0 = time.time()
    for it in range(cfg.iterations):
        model.train()
        x, hypo, y = (torch.from_numpy(a) for a in classifier_batch(cases, region_idx, rng, cfg.batch))
        swap = torch.from_numpy(rng.random(cfg.batch) < 0.5)
        x[swap], hypo[swap], y[swap] = x[swap].flip(1), hypo[swap].flip(1), y[swap].flip(1)
        brain = x[:, :, 0] > -1
        if cfg.hu_offset:              # drawn only when asked, so a phase without it keeps its random stream
            x[:, :, 0] = shift_hu(x[:, :, 0], brain, rng.uniform(-cfg.hu_offset, cfg.hu_offset, cfg.batch))
        x[:, :, 0] += brain * torch.randn_like(x[:, :, 0]) * float(rng.uniform(0, 0.06))
        prob, cam = model(x)
        loss, parts = danet_losses(prob, cam, y, hypo, pos_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if it % 25 == 0 or it == cfg.iterations - 1:
            _log(run_log, {"stage": group, "it": it, "loss": round(loss.item(), 4),
                           **{k: v.item() for k, v in parts.items()},
                           "s": round(time.time() - t0, 1)})
    model.eval()
    p_val, y_val = predict_pairs(model, val, region_idx)
    threshold = best_threshold(p_val.ravel(), y_val.ravel())
    regions = [REGION_NAMES[i] for i in region_idx]
    example = torch.zeros(len(regions), 2, 2, *CLASSIFIER_CROP)
    part = ClassifierPart(crop=CLASSIFIER_CROP, regions=tuple(regions), threshold=round(threshold, 4))
    draft = _draft(f"classify_{group}", f"aspects-danet-{group}", part, cfg, arch.to_dict(), parameter_count(model),
                   len(cases), history, provenance,
                   loss={"pos_weight": round(pos_weight, 3), "cam_weight": 0.5, "rank_weight": 0.5},
                   metrics={"validation_cases": len(val), "threshold_rule": "Youden J on validation pairs",
                            **binary_metrics(p_val.ravel(), y_val.ravel(), threshold)},
                   pytorch=_checkpoint(model, out_dir, f"danet_{group}", [*history, _phase(cfg, len(cases))]))
    return export_model(model, example, out_dir, f"danet_{group}", "pairs", ["probability", "cam"],
                        {"pairs": {0: "batch"}, "probability": {0: "batch"}, "cam": {0: "batch"}}, draft,
                        seed=cfg.seed)


def predict_pairs(model: DANet, cases: list[dict], region_idx) -> tuple[np.ndarray, np.ndarray]:
    ps, ys = [], []
    with torch.no_grad():
        for c in cases:
            prob, _ = model(torch.from_numpy(c["pairs"][list(region_idx)].astype(np.float32)))
            ps.append(prob.numpy())
            ys.append(c["affected"][list(region_idx)])
    return np.concatenate(ps), np.concatenate(ys).astype(int)


def binary_metrics(p: np.ndarray, y: np.ndarray, threshold: float) -> dict:
    from .metrics import auc
    pred = p >= threshold
    tp, tn = int((pred & (y == 1)).sum()), int((~pred & (y == 0)).sum())
    fp, fn = int((pred & (y == 0)).sum()), int((~pred & (y == 1)).sum())
    return {"sensitivity": round(tp / max(1, tp + fn), 4), "specificity": round(tn / max(1, tn + fp), 4),
            "accuracy": round((tp + tn) / max(1, len(y)), 4), "auc": round(auc(p, y), 4),
            "positives": int((y == 1).sum()), "negatives": int((y == 0).sum())}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Train and export the aspects-rt networks.")
    p.add_argument("what", choices=("segment", "classify"))
    p.add_argument("--data", type=Path, default=Path("build/data/train"))
    p.add_argument("--out", type=Path, default=Path("engines"))
    p.add_argument("--iterations", type=at_least(1), default=None)
    p.add_argument("--lr", type=number_from(0, inclusive=False), default=None, help="initial learning rate")
    p.add_argument("--paper-size", action="store_true", help="published network widths (GPU training)")
    p.add_argument("--stages", default=None, help="comma list: coarse,fine or subcortical,cortical")
    p.add_argument("--provenance", default=PROVENANCE,
                   help="the cards' data provenance (default: synthetic studies only)")
    p.add_argument("--hu-offset", type=number_from(0), default=0.0,
                   help="classify: shift each crop pair's CT numbers by a random offset of up to this many HU")
    p.add_argument("--continue", dest="resume", action="store_true",
                   help="continue each stage from its checkpoint in OUT/pytorch (a new phase, new seed)")
    args = p.parse_args(argv)
    known, stem = (("coarse", "fine"), "vbnet_{}") if args.what == "segment" else \
        (("subcortical", "cortical"), "danet_{}")
    stages = args.stages.split(",") if args.stages else list(known)
    if any(s not in known for s in stages) or len(set(stages)) != len(stages):
        p.error(f"--stages {args.stages}: a comma list of distinct stages from {', '.join(known)}")
    # Every checkpoint a continued phase starts from is there before hours of training begin.
    inits = {s: args.out / CHECKPOINT_DIR / f"{stem.format(s)}.pt" if args.resume else None for s in stages}
    missing = [str(path) for path in inits.values() if path is not None and not path.is_file()]
    if missing:
        raise UsageError(f"--continue: no checkpoint {', '.join(missing)} to continue from "
                         "(train a first phase without --continue)")
    run_log = args.out / "training_log.jsonl"
    args.out.mkdir(parents=True, exist_ok=True)
    train_fn: Callable[..., ModelCard]
    if args.what == "segment":
        cfg = TrainConfig(iterations=args.iterations or 1000, lr=args.lr or 4e-3, batch=1)
        cases = load_cases(args.data, ("image1", "labels1"))
        train_fn = train_segmenter
    else:
        cfg = TrainConfig(iterations=args.iterations or 400, lr=args.lr or 1e-3, batch=8, hu_offset=args.hu_offset)
        cases = load_cases(args.data, ("pairs", "hypo", "affected"))
        train_fn = train_classifier
    # The split always uses the base seed, so a continued phase validates on the same held-back cases.
    train, val = split(cases, cfg.val_fraction, SEED)
    for stage in stages:
        init = inits[stage]
        card = train_fn(stage, train, val, cfg, args.paper_size, args.out, run_log, init, args.provenance)
        print(stage, json.dumps(card.raw["metrics"]))


if __name__ == "__main__":
    sys.exit(exit_code_of(main))

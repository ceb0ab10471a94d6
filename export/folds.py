"""Leave-one-out fold models, kept as the files their training changed.

A fold is the shipped recipe run without one development subject (`export/train_realtex.sh`): its
DA-Nets and the density rule calibrated with them differ from the shipped set; the segmentation
networks and the atlas do not (`export.evaluate real --loo` fits the atlas without the subject
anyway). So a fold folder holds only those files, with a manifest of its own, and is merged onto
the shipped set when it is scored. This keeps the real leave-one-out figures re-measurable from a
checkout (`engines/folds/`, about 0.7 MB a fold) instead of from two hours of training.

    python -m export.folds build/realtex/models_sub002 engines/folds/sub002   # keep a trained fold
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import sys
import tempfile
from pathlib import Path

from runtime.errors import ModelError, OutputExists, exit_code_of
from runtime.modelcard import MANIFEST, RULE_ROLE, file_sha256, load_manifest
from runtime.result import CLASSIFIER_ROLES
from runtime.shipped import DEFAULT_MODEL_DIR

from .manifest import cards, model_files, write_manifest

FOLD_ROLES = (*CLASSIFIER_ROLES, RULE_ROLE)     # what a fold's training and calibration change


def extract(trained: Path, out: Path) -> list[str]:
    """Copy the DA-Net cards, their graphs and the density rule of `trained` into `out` (a new folder),
    with their manifest. Returns the names kept."""
    if out.exists():
        raise OutputExists(f"{out} exists; a kept fold is never overwritten")
    trained_files = load_manifest(trained)      # a folder without a manifest is not a finished fold
    kept_cards = {p: d for p, d in cards(trained).items() if d["role"] in FOLD_ROLES}
    if {d["role"] for d in kept_cards.values()} != set(FOLD_ROLES):
        raise ModelError(f"{trained} lacks a card for one of {', '.join(FOLD_ROLES)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))   # complete, or not there
    for card_path, card in kept_cards.items():
        for name in (card_path.name, *model_files(card)):
            shutil.copy2(trained / name, staging / name)
    write_manifest(staging)
    kept = load_manifest(staging)
    if any(trained_files.get(name) != digest for name, digest in kept.items()):
        shutil.rmtree(staging)
        raise ModelError(f"{trained}: a file does not match its {MANIFEST}")
    staging.chmod(0o755)
    staging.rename(out)
    return sorted(kept)


def complete_folder(fold: Path, base: Path = DEFAULT_MODEL_DIR) -> Path:
    """A complete model folder: `base` with the fold's files over it, each checked against the fold's
    own manifest first. A complete folder (every file `base` has) is returned as it is. The merged
    copy is a temporary folder removed when the process ends."""
    manifest, shipped = load_manifest(fold), load_manifest(base)
    if set(shipped) <= set(manifest):
        return fold
    for name, digest in manifest.items():
        path = fold / name
        if not path.is_file() or file_sha256(path) != digest:
            raise ModelError(f"{path}: missing, or not the file in {fold / MANIFEST}")
    out = Path(tempfile.mkdtemp(prefix=f"aspects-fold-{fold.name}-"))
    atexit.register(shutil.rmtree, out, True)
    for name in shipped:
        shutil.copy2(base / name, out / name)
    for name in manifest:
        shutil.copy2(fold / name, out / name)
    write_manifest(out)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("trained", type=Path, help="a complete model folder trained without one subject")
    p.add_argument("out", type=Path, help="the new fold folder (e.g. engines/folds/sub002)")
    args = p.parse_args(argv)
    for name in extract(args.trained, args.out):
        print(name)
    print(json.dumps({"fold": str(args.out), "manifest_sha256": file_sha256(args.out / MANIFEST)}))


if __name__ == "__main__":
    sys.exit(exit_code_of(main))

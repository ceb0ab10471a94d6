"""Write a model folder's MANIFEST.json: the sha256 of every card and model file in it.

The runtime refuses a card whose bytes are not the ones in the manifest (an edited
threshold or window is caught, not just an edited ONNX file). For the shipped
folder the manifest's own hash is pinned in runtime/shipped.py, which this
command updates.

    python -m export.manifest engines
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from runtime.errors import UnreadableInput, exit_code_of
from runtime.modelcard import MANIFEST, file_sha256
from runtime.shipped import DEFAULT_MODEL_DIR

SHIPPED_PY = Path(__file__).resolve().parent.parent / "runtime" / "shipped.py"


def cards(model_dir: Path) -> dict[Path, dict]:
    """The folder's model cards (JSON files with a role), each with its content."""
    docs = {p: json.loads(p.read_text()) for p in sorted(model_dir.glob("*.json")) if p.name != MANIFEST}
    return {p: d for p, d in docs.items() if "role" in d}


def model_files(card: dict) -> list[str]:
    """The files a card names (its graphs, or the atlas's arrays), relative to its folder."""
    return [card[key] for key in ("onnx", "onnx_fp16", "file") if card.get(key)]


def write_manifest(model_dir: Path) -> str:
    """Returns the manifest's sha256."""
    files = {}
    for card_path, card in cards(model_dir).items():
        files[card_path.name] = file_sha256(card_path)
        for name in model_files(card):
            files[name] = file_sha256(model_dir / name)
    path = model_dir / MANIFEST
    path.write_text(json.dumps({"files": files}, indent=2, sort_keys=True) + "\n")
    digest = file_sha256(path)
    if model_dir.resolve() == DEFAULT_MODEL_DIR.resolve():
        text = SHIPPED_PY.read_text()
        SHIPPED_PY.write_text(re.sub(r'SHIPPED_MANIFEST_SHA256 = "[0-9a-f]*"',
                                     f'SHIPPED_MANIFEST_SHA256 = "{digest}"', text))
    return digest


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir", type=Path, nargs="?", default=DEFAULT_MODEL_DIR)
    args = p.parse_args(argv)
    if not args.model_dir.is_dir():
        raise UnreadableInput(f"{args.model_dir}: no such folder")
    print(write_manifest(args.model_dir))


if __name__ == "__main__":
    sys.exit(exit_code_of(main))

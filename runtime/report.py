"""Write what the stroke team reads: report.json and two key-slice PNGs.

Images are in radiological convention (patient right on the image left) on the
aligned model grid: every region outlined in its colour, affected regions
filled red, a yellow heat map where region tissue is darker than its mirror
image (runtime.density), the score, the side and whose scan it is printed on
the image.
"""

from __future__ import annotations

import io
import json
import unicodedata
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from .dicom_out import (
    DERIVED_SERIES_FILE,
    derived_series,
    make_sc,
    make_seg,
    make_sr,
    source_slice_for,
    supports_dicom,
    to_bytes,
)
from .errors import UsageError
from .output import OutputFolder
from .read.series import age_text
from .regions import AFFECTED_RGB, REGION_NAMES, REGIONS, SUBCORTICAL, SUPRAGANGLIONIC, is_region, label_id
from .result import StudyResult
from .score import BORDERLINE_HU

OUTPUTS = ("json", "png", "seg", "sr", "sc")
FILES = {"json": ("report.json",), "png": ("ganglionic.png", "supraganglionic.png"), "seg": ("seg.dcm",),
         "sr": ("sr.dcm",), "sc": ("sc_ganglionic.dcm", "sc_supraganglionic.dcm")}
REPORT_FILES = tuple(name for kind in OUTPUTS for name in FILES[kind])
DICOM_OUTPUTS = ("seg", "sr", "sc")
DISCLAIMER = ("Research software. The shipped models were built from synthetic studies and three real "
              "development studies and have not been validated on patients; not for clinical decisions.")
DISPLAY_WINDOW = (40.0, 80.0)   # level, width: a stroke reading window
HEAT_RGB = np.array((255, 230, 0), float)
HYPERDENSE_RGB = (255, 0, 255)   # runtime.hyperdense's foci: a colour no region and no heat map uses
HEAT_HU = (2.0, 8.0)            # asymmetry shown from faint (2 HU darker than the mirror) to full (8 HU)
UPSCALE = 2


def output_folder(out: str | Path, outputs: tuple[str, ...] = OUTPUTS) -> OutputFolder:
    """The claim on a report folder (runtime.output): take it before scoring, write into it after.
    Every file the run may write is claimed, so none of them may already exist."""
    derived = (DERIVED_SERIES_FILE,) if any(kind in DICOM_OUTPUTS for kind in outputs) else ()
    return OutputFolder(out, tuple(name for kind in outputs for name in FILES[kind]) + derived)


def check_outputs(outputs: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [o for o in outputs if o not in OUTPUTS]
    if unknown or not outputs:
        raise UsageError(f"outputs must be some of {', '.join(OUTPUTS)}; got {', '.join(outputs) or 'none'}")
    return outputs


def write_report(result: StudyResult, out: str | Path | OutputFolder,
                 outputs: tuple[str, ...] | None = None, replaces: tuple = ()) -> dict[str, Path]:
    """All of the report or none of it; never over an existing file. `out` is a folder path, or a
    folder the caller already claimed (the CLI claims it before the compute). `outputs`: None for
    the default: everything for a DICOM input; report.json and the PNGs for a volume file, whose
    DICOM outputs (asked for by name) reference a CT series made from it with new UIDs. `replaces`:
    earlier SRs of the study this result supersedes (dicom_out.make_sr)."""
    wanted = check_outputs(outputs) if outputs is not None else OUTPUTS
    if not supports_dicom(result) and outputs is None:
        wanted = tuple(o for o in wanted if o not in DICOM_OUTPUTS)
    if isinstance(out, OutputFolder):
        return _write(result, out, wanted, replaces)
    with output_folder(out, wanted) as folder:
        return _write(result, folder, wanted, replaces)


def _write(result: StudyResult, folder: OutputFolder, wanted: tuple[str, ...], replaces: tuple) -> dict[str, Path]:
    """Everything is rendered and encoded first, then placed; report.json goes last."""
    files: dict[str, bytes] = {}
    derived = not supports_dicom(result) and any(o in DICOM_OUTPUTS for o in wanted)
    if derived:
        if result.volume is None:
            raise UsageError(f"{result.source}: DICOM outputs need the input's source images or its volume")
        headers, files[DERIVED_SERIES_FILE] = derived_series(*result.volume, result.source)
        result = replace(result, source_images=tuple(headers))
    levels = key_slices(result.labels)
    sources = {level: source_slice_for(result, z) for level, z in levels.items()}
    rendered = {level: render_slice(result, z, level, sources[level]) for level, z in levels.items()}
    if "png" in wanted:
        for level, img in rendered.items():
            buf = io.BytesIO()
            img.save(buf, "PNG", optimize=True)
            files[f"{level}.png"] = buf.getvalue()
    if "seg" in wanted:
        files["seg.dcm"] = to_bytes(make_seg(result))
    if "sr" in wanted:
        files["sr.dcm"] = to_bytes(make_sr(result, replaces))
    if "sc" in wanted:
        from pydicom.uid import generate_uid
        series = generate_uid()
        for n, (level, img) in enumerate(rendered.items(), start=1):
            files[f"sc_{level}.dcm"] = to_bytes(make_sc(result, np.asarray(img), sources[level] or 0, n, series))
    images = {level: {"file": f"{level}.png" if "png" in wanted else None, "model_slice": z,
                      "source_image": _source_ref(result, sources[level])} for level, z in levels.items()}
    doc = report_dict(result, images)
    doc["outputs"] = sorted([*files, "report.json"] if "json" in wanted else files)
    if derived:
        doc["dicom_outputs"] = (f"new UIDs: the input is a volume file without DICOM identity; the outputs reference "
                                f"a CT series made from it, in {DERIVED_SERIES_FILE} (StudyInstanceUID "
                                f"{result.source_images[0].StudyInstanceUID}), with no patient identity")
    elif not supports_dicom(result):
        doc["dicom_outputs"] = ("not written by default for a volume file (no DICOM identity): ask for seg, sr "
                                "or sc to get them with new UIDs, referencing a CT series made from it "
                                f"({DERIVED_SERIES_FILE})")
    paths = {name: folder.write(name, data) for name, data in files.items()}
    if "json" in wanted:
        paths["report"] = folder.write("report.json", (json.dumps(doc, indent=2) + "\n").encode())
    folder.commit()
    return paths


def _source_ref(result: StudyResult, index: int | None) -> dict | None:
    if index is None:
        return None
    ds = result.source_images[index]
    return {"index": index, "instance_number": int(ds.get("InstanceNumber", 0) or 0),
            "sop_instance_uid": str(ds.SOPInstanceUID)}


def report_dict(result: StudyResult, images: dict) -> dict:
    s = result.score
    a = result.alignment
    return {
        "aspects": s.aspects,
        "aspects_left": s.left,
        "aspects_right": s.right,
        "symptomatic_side": s.symptomatic_side,
        "dichotomised": ">6" if s.above_cut else "<=6",
        "aspects_range": [s.lowest, s.highest],        # as the borderline and unassessed calls fall
        "dichotomy_firm": s.dichotomy_firm,
        "affected_regions": list(s.affected),
        "regions": [{"region": c.region, "side": c.side, "affected": c.affected, "assessed": c.assessed,
                     "decided_by": c.decided_by, "borderline": c.borderline,
                     "density_difference_hu": c.difference_hu, "hypodense_ml": c.hypodense_ml,
                     "probability": None if c.probability is None else round(c.probability, 4),
                     "crop_origin_zyx": _crop_origin(result, c.region, c.side)}
                    for c in s.calls],
        "alignment": {"model_to_study_lps": np.round(a.matrix, 5).tolist(),
                      "plane_normal_lps": np.round(a.normal, 5).tolist(),
                      "plane_point_lps_mm": np.round(a.point, 3).tolist(),
                      "yaw_deg": round(a.yaw_deg, 3), "roll_deg": round(a.roll_deg, 3),
                      "symmetry": round(a.symmetry, 4)},
        "model_grid": {"shape_zyx": list(result.grid.shape), "spacing_xyz_mm": list(result.grid.spacing),
                       "slab_average": result.grid.slab},
        "study": {"source": result.source, **result.metadata},
        "timings_s": {k: round(v, 4) for k, v in result.timings},
        "models": list(result.models),
        "hyperdense": [asdict(f) for f in result.hyperdense.foci],    # runtime.hyperdense; [] when none
        "metal": None if result.hyperdense.metal is None else asdict(result.hyperdense.metal),
        "warnings": list(result.warnings),
        "images": images,
        "disclaimer": DISCLAIMER,
    }


def _crop_origin(result: StudyResult, region: str, side: str) -> list[int] | None:
    """Model-grid corner of the DA-Net crop of this region (the left crop; the right one is its mirror)."""
    for batch in result.batches:
        if region in batch.regions:
            z, y, x = batch.origins[batch.regions.index(region)]
            if side == "right":
                x = result.grid.shape[2] - x - batch.crop[2]
            return [int(z), int(y), int(x)]
    return None


def key_slices(labels: np.ndarray) -> dict[str, int]:
    """Ganglionic level: most subcortical-region area; supraganglionic: most M4-M6 area above it."""
    sub = [label_id(r, s) for r in SUBCORTICAL for s in ("left", "right")]
    supra = [label_id(r, s) for r in SUPRAGANGLIONIC for s in ("left", "right")]
    area_sub = np.isin(labels, sub).sum(axis=(1, 2))
    area_sup = np.isin(labels, supra).sum(axis=(1, 2))
    z_g = int(np.argmax(area_sub)) if area_sub.any() else labels.shape[0] // 2
    above = area_sup.copy()
    above[: z_g + 1] = 0
    z_s = int(np.argmax(above)) if above.any() else min(labels.shape[0] - 1, z_g + 2)
    return {"ganglionic": z_g, "supraganglionic": z_s}


def render_slice(result: StudyResult, z: int, level: str, source: int | None = None) -> Image.Image:
    lvl, width = DISPLAY_WINDOW
    gray = np.clip((result.hu[z] - (lvl - width / 2)) / width, 0, 1) * 255
    rgb = np.repeat(gray[..., None], 3, axis=2)
    rgb = rgb.repeat(UPSCALE, 0).repeat(UPSCALE, 1)
    labels = result.labels[z].repeat(UPSCALE, 0).repeat(UPSCALE, 1)
    lo, hi = HEAT_HU
    heat = np.clip((-result.asymmetry_hu[z] - lo) / (hi - lo), 0, 1).repeat(UPSCALE, 0).repeat(UPSCALE, 1)
    heat *= is_region(labels)
    rgb = rgb * (1 - 0.6 * heat[..., None]) + HEAT_RGB * (0.6 * heat[..., None])
    affected = {(c.region, c.side) for c in result.score.calls if c.affected}
    borderline = {(c.region, c.side) for c in result.score.calls if c.borderline}
    names = []
    for r, name in enumerate(REGION_NAMES):
        for side in ("left", "right"):
            mask = labels == label_id(r, side)
            if not mask.any():
                continue
            if (name, side) in affected:
                rgb[mask] = 0.45 * np.array(AFFECTED_RGB) + 0.55 * rgb[mask]
            edge = mask & ~ndimage.binary_erosion(mask, iterations=2)
            rgb[edge] = REGIONS[r].rgb
            cy, cx = np.argwhere(mask).mean(axis=0)
            names.append((name + ("?" if (name, side) in borderline else ""), cx, cy, (name, side) in affected))
    bright = result.hyperdense.mask[z].repeat(UPSCALE, 0).repeat(UPSCALE, 1)
    rgb[bright & ~ndimage.binary_erosion(bright, iterations=2)] = HYPERDENSE_RGB
    img = Image.fromarray(rgb.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    font = _font(14)
    for name, cx, cy, hit in names:
        draw.text((cx - 8, cy - 7), name, fill=(255, 255, 255) if not hit else (255, 255, 0), font=font,
                  stroke_width=2, stroke_fill=(0, 0, 0))
    s = result.score
    side = f", {s.symptomatic_side} hemisphere" if s.symptomatic_side else ""
    ref = _source_ref(result, source)
    where = f"source image {ref['instance_number']}" if ref else f"model slice {z}"
    spread = f" [{s.lowest}-{s.highest}]" if s.lowest != s.highest else ""
    title = f"ASPECTS {s.aspects}{spread}{side} ({'>6' if s.above_cut else '<=6'})  |  {level} level, {where}"
    big = _font(18)
    draw.text((8, 6), title, fill=(255, 255, 255), font=big, stroke_width=2, stroke_fill=(0, 0, 0))
    who = _fit(draw, identity_line(result), font, rgb.shape[1] - 16)
    draw.text((8, 30), who, fill=(255, 255, 255), font=font, stroke_width=2, stroke_fill=(0, 0, 0))
    h, w = labels.shape
    draw.text((8, h // 2), "R", fill=(255, 255, 0), font=big, stroke_width=2, stroke_fill=(0, 0, 0))
    draw.text((w - 20, h // 2), "L", fill=(255, 255, 0), font=big, stroke_width=2, stroke_fill=(0, 0, 0))
    for k, (text, colour) in enumerate(footer_lines(result, z), start=1):
        draw.text((8, h - 22 * k), _fit(draw, text, font, w - 16), fill=colour, font=font, stroke_width=2,
                  stroke_fill=(0, 0, 0))
    return img


def footer_lines(result: StudyResult, z: int) -> list[tuple[str, tuple[int, int, int]]]:
    """The legend of the key image of model slice z, bottom line first."""
    s = result.score
    white = (255, 255, 255)
    lines = [("research use only - not for clinical decisions", (200, 200, 200)),
             (f"affected: {', '.join(s.affected) or 'none'}", white),
             (f"yellow: tissue {HEAT_HU[0]:.0f}-{HEAT_HU[1]:.0f}+ HU darker than its mirror", (255, 230, 0))]
    if any(c.borderline for c in s.calls):
        lines.append((f"?: borderline, the call flips within {BORDERLINE_HU} HU", white))
    if s.not_assessed:     # drawn nowhere above: say so, or a missing region reads as a normal one
        lines.append((f"not assessed (not found on this scan): {', '.join(s.not_assessed)}", white))
    weak = result.weak_fit
    if weak:       # the outlines drawn here are what to check
        lines.append((f"CHECK the outlines: the {' and the '.join(weak)} {'was' if len(weak) == 1 else 'were'} "
                      "weak on this scan", HYPERDENSE_RGB))
    if result.source_limits:     # report.json says each in full; PACS users see this line
        lines.append((f"CHECK the source series: {', '.join(result.source_limits)}; the density calls are less sure",
                      HYPERDENSE_RGB))
    if result.child_years is not None:
        lines.append((f"patient {age_text(result.child_years)} old: ASPECTS and these models are made for adults",
                      HYPERDENSE_RGB))
    if result.hyperdense.metal is not None:
        near = ", ".join(result.hyperdense.metal.regions_near) or "no region"
        lines.append((f"METAL near {near}: its streaks can make or hide a call there", HYPERDENSE_RGB))
    for f in result.hyperdense.foci:     # the top lines: the score may not apply at all
        where = "outlined" if f.slices[0] <= z <= f.slices[1] else "not on this slice"
        lines.append((f"HYPERDENSE tissue {f.volume_ml:.1f} mL, {f.side} ({where}): haemorrhage? look before using "
                      "this score", HYPERDENSE_RGB))
    return lines


def identity_line(result: StudyResult) -> str:
    """Whose scan, burned into every key image: a PNG has no header, and a key image seen away from its
    study (on a phone, a printout, a slide) must not be read as another patient's."""
    ident = result.metadata.get("identity") or {}
    if not any(ident.get(t) for t in ("PatientName", "PatientID")):
        return f"file {Path(result.source).name} (no patient identity)"
    name = str(ident.get("PatientName", "")).split("=")[0]     # a PN's alphabetic group, not ideographic
    family, _, given = name.partition("^")
    parts = [", ".join(p for p in (family.strip(), given.replace("^", " ").strip()) if p) or "(no name)"]
    if ident.get("PatientID"):
        parts.append(f"ID {ident['PatientID']}")
    if ident.get("AccessionNumber"):
        parts.append(f"acc. {ident['AccessionNumber']}")
    date = str(ident.get("StudyDate", ""))
    if len(date) == 8 and date.isdigit():
        parts.append(f"{date[:4]}-{date[4:6]}-{date[6:]}")
    series = " ".join(str(v) for v in (ident.get("SeriesNumber"), result.metadata.get("series_description")) if v)
    if series:
        parts.append(f"series {series}")
    return "  |  ".join(_latin_ascii(part) for part in parts)


# Letters that Unicode does not decompose into an ASCII letter and a mark.
_LETTERS = str.maketrans({"ß": "ss", "Æ": "AE", "æ": "ae", "Ø": "O", "ø": "o", "Œ": "OE", "œ": "oe", "Ð": "D",
                          "ð": "d", "Þ": "TH", "þ": "th", "Ł": "L", "ł": "l", "Đ": "D", "đ": "d", "ı": "i"})


def _latin_ascii(text: str) -> str:
    """The font drawn on the key images (Pillow's own, the same on every machine) has ASCII only: 'Müller'
    came out as 'M[]ller'. Accents are dropped (Muller), a few letters spelled out (Strasse); a word in
    another script cannot be spelled so and is marked, the ID beside it still shows."""
    plain = "".join(c for c in unicodedata.normalize("NFKD", text.translate(_LETTERS)) if not unicodedata.combining(c))
    return plain if plain.isascii() else "(not in Latin script)"


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: float) -> str:
    """Cut at the end with an ellipsis: the name and ID come first and always show."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def _font(size: int):
    return ImageFont.load_default(size=size)

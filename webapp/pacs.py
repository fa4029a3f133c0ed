"""The app's PACS side: an "Open in viewer" link on each hit, and a query by StudyInstanceUID.

Why a module of its own: both features wrap the search handlers of ``webapp.service`` instead of
changing them. A hit of a PACS-sourced index carries its StudyInstanceUID as its study id
(``data.dicomweb``); with a viewer URL template (``--viewer-url 'http://pacs/ohif/viewer?StudyInstanceUIDs={study_uid}'``)
its JSON record gains ``study_uid`` and ``viewer_url`` and its report card a link. No template, no
link. A query by StudyInstanceUID fetches the study's frontal image over WADO-RS and hands it to the
image search as an uploaded DICOM file would be (same decoding, de-identification and familiarity
verdict; the temporary copy is deleted once read).
"""
from __future__ import annotations

import html
import os
import re
import tempfile
from typing import Any, Callable, Sequence
from urllib.parse import quote

from data.dicomweb import is_study_uid  # a PACS-sourced hit's study id is its StudyInstanceUID
from data.errors import ImageLoadError, PacsError
from webapp.serving import then

PLACEHOLDER = "{study_uid}"
VIEWER_LINK_TEXT = "Open in viewer"


def check_template(template: str | None) -> str | None:
    """The --viewer-url template, refused at start-up when it cannot make a link."""
    if not template:
        return None
    if PLACEHOLDER not in template or not template.startswith(("http://", "https://")):
        raise ValueError(f"--viewer-url must be an http(s) URL containing {PLACEHOLDER}, got {template!r}")
    return template


def viewer_url(template: str | None, study_id: str) -> str | None:
    if not template or not is_study_uid(study_id):
        return None
    return template.replace(PLACEHOLDER, quote(study_id, safe="."))


def add_links(records: list[dict[str, Any]], template: str | None) -> list[dict[str, Any]]:
    """Hit records of a PACS study with its ``study_uid``, and its ``viewer_url`` when there is a template."""
    out = []
    for record in records:
        study_id = str(record.get("study_id", ""))
        if is_study_uid(study_id):
            link = viewer_url(template, study_id)
            record = {**record, "study_uid": study_id, **({"viewer_url": link} if link else {})}
        out.append(record)
    return out


def link_cards(cards: str, template: str | None) -> str:
    """Report cards (``webapp.presenters.report_cards``) with a viewer link after each PACS study's id."""
    if not template or not cards:
        return cards

    def anchor(match: re.Match) -> str:
        link = viewer_url(template, html.unescape(match.group(2)))
        if link is None:
            return match.group(0)
        return (f"{match.group(0)} <a class='cxr-viewer' href='{html.escape(link, quote=True)}' target='_blank' "
                f"rel='noopener noreferrer'>{VIEWER_LINK_TEXT}</a>")

    return re.sub(r"<b>(#\d+) ([0-9.]+)</b>", anchor, cards)


def with_viewer_links(fn: Callable[..., tuple], template: str | None, html_at: Sequence[int],
                      records_at: int) -> Callable[..., tuple]:
    """Wrap a search handler returning a tuple: PACS hits in its JSON get their ``study_uid`` (always) and
    ``viewer_url``, its report-card HTML a link (with a template)."""

    def linked(answer: tuple, args: tuple) -> tuple:
        out = list(answer)
        for i in html_at:
            if isinstance(out[i], str):
                out[i] = link_cards(out[i], template)
        records = out[records_at]
        if isinstance(records, dict):
            out[records_at] = {**records, **{key: add_links(records[key], template)
                                             for key in ("hits", "reports") if isinstance(records.get(key), list)}}
        return tuple(out)

    return then(fn, linked)  # a coroutine function when fn is one (webapp.serving.then)


class UidQuery:
    """Image search by StudyInstanceUID: the study's frontal image from the PACS, searched like an upload."""

    def __init__(self, search_image: Callable[..., tuple], source: Any):
        self.search_image = search_image  # SearchService.search_image (possibly wrapped)
        self.source = source  # data.dicomweb.PacsSource

    def search(self, study_uid: str | None, k: int, label: str, view: str, finding: str) -> tuple:
        """Same outputs as ``SearchService.search_image``."""
        uid = (study_uid or "").strip()
        try:
            if not is_study_uid(uid):
                raise ImageLoadError("Enter a StudyInstanceUID (digits and dots, e.g. 1.2.840.113619.2.55.3).")
            data = self.source.frontal_dicom(uid)
        except (ImageLoadError, PacsError) as exc:
            return None, [], "", None, f"**Warning:** {exc}", {"hits": [], "reports": []}, None
        fd, path = tempfile.mkstemp(prefix="pacs-query-", suffix=".dcm")  # read (then deleted) by the image search
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        try:
            return self.search_image(path, k, label, view, finding)
        finally:
            if os.path.exists(path):
                os.unlink(path)

"""A real Orthanc (Debian's ``orthanc`` + ``orthanc-dicomweb``) for the PACS tests, and the DICOM they store in it.

The server starts from a JSON config on a free loopback port, with its own storage folder, the
DICOMweb plugin, HTTP basic auth and ``RemoteAccessAllowed: false``; nothing is installed here
(``make orthanc`` installs the packages). Tests skip when the binary is absent, unless ``CI`` is set:
then they fail, so a CI run can never pass without exercising the PACS path.
"""
from __future__ import annotations

import glob
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pydicom
import requests
from PIL import Image
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid)

from tests.helpers_dicom import PATIENT_ID, PATIENT_NAME

USER, PASSWORD = "pacs", "orthanc-test-secret"
BIRTH_DATE = "19450317"
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def orthanc_binary() -> str | None:
    return shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc",) if os.access(p, os.X_OK)), None)


def dicomweb_plugin() -> str | None:
    found = sorted(glob.glob("/usr/share/orthanc/plugins/libOrthancDicomWeb.so*") +
                   glob.glob("/usr/lib/orthanc/libOrthancDicomWeb.so*"))
    return found[0] if found else None


def require_orthanc() -> tuple[str, str]:
    """(binary, plugin), or skip (fail under CI) with the reason."""
    import pytest  # here, not at the top: bench.pacs_ingest uses this module outside pytest

    binary, plugin = orthanc_binary(), dicomweb_plugin()
    if binary and plugin:
        return binary, plugin
    missing = "Orthanc" if not binary else "its DICOMweb plugin"
    message = f"{missing} is not installed (apt-get install orthanc orthanc-dicomweb, or `make orthanc`)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI is set, so the PACS tests must run")
    pytest.skip(message)
    raise AssertionError("unreachable")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OrthancServer:
    """One Orthanc process over a storage folder that outlives it (kill, then start again: same studies)."""

    def __init__(self, root: Path):
        self.binary, self.plugin = require_orthanc()
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.config = self.root / "orthanc.json"
        self.config.write_text(json.dumps({
            "Name": "cxr-test", "StorageDirectory": str(self.root / "db"), "IndexDirectory": str(self.root / "db"),
            "HttpPort": self.port, "DicomServerEnabled": False, "DicomPort": free_port(),
            "RemoteAccessAllowed": False, "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
            "HttpCompressionEnabled": False, "Plugins": [self.plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }))

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/dicom-web"

    def auth_file(self, path: Path, password: str = PASSWORD) -> Path:
        path.write_text(json.dumps({"username": USER, "password": password}))
        return path

    def start(self, timeout: float = 60) -> "OrthancServer":
        log = (self.root / "orthanc.log").open("ab")
        self.proc = subprocess.Popen([self.binary, str(self.config)], stdout=log, stderr=subprocess.STDOUT,
                                     cwd=self.root, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited at start-up: {(self.root / 'orthanc.log').read_text()[-800:]}")
            try:
                if requests.get(f"{self.base}/system", auth=(USER, PASSWORD), timeout=2).ok:
                    return self
            except requests.ConnectionError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("Orthanc did not answer within a minute")

    def kill(self) -> None:
        """SIGKILL: what a crash or a pulled cable looks like to a client."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def store(self, datasets: Sequence[Dataset]) -> None:
        """STOW-RS through dicomweb-client, as a modality or router would send them."""
        from dicomweb_client.api import DICOMwebClient
        from dicomweb_client.session_utils import create_session_from_user_pass

        client = DICOMwebClient(self.url, session=create_session_from_user_pass(USER, PASSWORD))
        for start in range(0, len(datasets), 10):
            client.store_instances(list(datasets[start:start + 10]))

    def delete_study(self, study_uid: str) -> None:
        """Remove a study (Orthanc's REST API: DICOMweb has no delete in this plugin version)."""
        found = requests.post(f"{self.base}/tools/lookup", data=study_uid, auth=(USER, PASSWORD), timeout=10).json()
        for entry in found:
            if entry.get("Type") == "Study":
                requests.delete(f"{self.base}/studies/{entry['ID']}", auth=(USER, PASSWORD), timeout=10).raise_for_status()


# --------------------------------------------------------------------------- DICOM fixture data
def _base(sop_class: str, study_uid: str, modality: str, patient: str, transfer: str = ExplicitVRLittleEndian) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)  # Part 10, as modalities send it
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient, PATIENT_ID, BIRTH_DATE, "F"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20240102", "101500", "ACC" + study_uid[-6:]
    ds.ReferringPhysicianName, ds.InstitutionName = "Smith^John", "General Hospital"
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, 1
    ds.Modality = modality
    return ds


def radiograph(png: str | Path, study_uid: str, view: str = "PA", j2k: str = "", patient: str = PATIENT_NAME) -> Dataset:
    """A CR image of a demo phantom with real patient/study tags; ``j2k``: "real" (JPEG 2000 lossless,
    decodable) or "broken" (a JPEG 2000 header and no image: what an undecodable archive object is)."""
    transfer = JPEG2000Lossless if j2k else ExplicitVRLittleEndian
    ds = _base(CR_STORAGE, study_uid, "CR", patient, transfer)
    pixels = np.asarray(Image.open(png).convert("L"), np.uint8)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.ViewPosition = view
    ds.BodyPartExamined = "CHEST"
    if j2k == "real":
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG2000", irreversible=False, no_jp2=True)
        ds.PixelData = pydicom.encaps.encapsulate([buffer.getvalue()])
    elif j2k == "broken":
        ds.PixelData = pydicom.encaps.encapsulate([b"\xff\x4f\xff\x51" + b"\0" * 64])
    else:
        ds.PixelData = pixels.tobytes()
    return ds


def text_sr(study_uid: str, findings: str, impression: str, patient: str = PATIENT_NAME) -> Dataset:
    """A Basic Text SR: a container of TEXT items "Findings" and "Impression" (DCM 121071 / 121073)."""
    ds = _base(BASIC_TEXT_SR, study_uid, "SR", patient)
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.ConceptNameCodeSequence = DicomSequence([_code("18748-4", "LN", "Diagnostic Imaging Report")])
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    items = []
    for code, meaning, text in (("121071", "Findings", findings), ("121073", "Impression", impression)):
        if text:
            item = Dataset()
            item.RelationshipType, item.ValueType = "CONTAINS", "TEXT"
            item.ConceptNameCodeSequence = DicomSequence([_code(code, "DCM", meaning)])
            item.TextValue = text
            items.append(item)
    ds.ContentSequence = DicomSequence(items)
    return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, scheme, meaning
    return code

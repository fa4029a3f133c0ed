"""PACS ingest (issue 27): studies per second indexed over loopback DICOMweb from a real Orthanc, and its ratio
to indexing the same images from a folder (target <= 1.5x).

    python -m bench.pacs_ingest [--reps 2] [--in-flight 4]

The fixture is the tests' (tests/orthanc.py): 30 demo phantoms as CR DICOM stored with STOW-RS, 25 PA (20
with a Basic Text SR, one JPEG 2000) and 5 lateral-only. Both paths embed from scratch (a fresh feature
cache) with the offline demo's run; the folder path reads the same 25 images as PNG files. Each rep
alternates the two (folder, PACS) so a load change on the shared box hits both alike; medians reported.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
from dataclasses import replace
from pathlib import Path

from bench.common import emit, log, machine, scratch_dir, setup_environment, stopwatch, target


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--in-flight", type=int, default=4)
    args = p.parse_args(argv)
    setup_environment()
    os.environ.setdefault("CXR_RUNTIME", "torch")
    from pydicom.uid import generate_uid

    from data.demo import load_demo_dataset
    from data.dicomweb import PacsSource
    from index.build import build_from_encoder
    from index.sync import SyncReport, build_from_pacs, fetch_studies
    from model.retrieval_model import RetrievalModel
    from pipeline.demo import ensure_demo
    from tests.orthanc import OrthancServer, dicomweb_plugin, orthanc_binary, radiograph, text_sr

    if not (orthanc_binary() and dicomweb_plugin()) and not os.environ.get("CI"):
        report = {"pacs_ingest": {"skipped": "Orthanc or its DICOMweb plugin is not installed (make orthanc)"}}
        emit(report)
        return report
    load_at_start = machine()["load_average"]
    run_dir, _ = ensure_demo()
    studies = [s for s in load_demo_dataset() if s.image_path][:30]
    work = scratch_dir("bench-pacs-")
    os.environ["CXR_CACHE"] = str(work / "cache")  # fresh feature caches: both paths embed every image
    encoder = RetrievalModel.from_run(run_dir)
    server = OrthancServer(work / "orthanc").start()
    try:
        datasets, frontal = [], []
        for i, study in enumerate(studies):
            uid = generate_uid()
            datasets.append(radiograph(study.image_path, uid, view="LL" if i >= 25 else "PA",
                                       j2k="real" if i == 24 else ""))
            if i < 20:
                datasets.append(text_sr(uid, study.findings, study.impression))
            if i < 25:
                frontal.append(study)
        with stopwatch() as t_store:
            server.store(datasets)
        source = PacsSource(server.url, auth_file=server.auth_file(work / "auth.json"))
        folder_s, pacs_s, fetch_s = [], [], []
        for rep in range(args.reps):
            images = work / f"folder{rep}"
            images.mkdir()
            local = [replace(s, image_paths=(str(shutil.copy(s.image_path, images / Path(s.image_path).name)),))
                     for s in frontal]
            with stopwatch() as t:
                build_from_encoder(work / f"folder-index{rep}", encoder, local, data_root=images, progress=False)
            folder_s.append(t["s"])
            with stopwatch() as t:
                manifest, report = build_from_pacs(work / f"pacs-index{rep}", encoder, source, progress=False,
                                                   in_flight=args.in_flight)
            pacs_s.append(t["s"])
            with stopwatch() as t:  # the DICOMweb part alone: list, fetch, decode, write PNGs (no embedding)
                fetched = fetch_studies(source, source.list_studies(), work / f"fetch{rep}", SyncReport(), args.in_flight)
            fetch_s.append(t["s"])
            assert len(fetched) == 25
            assert manifest.count == 25 and len(report.skipped) == 5, report.counts()
            log(f"rep {rep}: folder {folder_s[-1]:.2f}s, PACS {pacs_s[-1]:.2f}s")
    finally:
        server.stop()
    folder, pacs = statistics.median(folder_s), statistics.median(pacs_s)
    ratio = round(pacs / folder, 3)
    report = {
        "machine": machine(),
        "pacs_ingest": {
            "fixture": "30 CR studies (25 PA incl. 1 JPEG 2000, 20 with SR; 5 lateral-only), Orthanc 1.10 on loopback",
            "in_flight": args.in_flight, "reps": args.reps, "stow_30_studies_s": round(t_store["s"], 3),
            "pacs_build_s": [round(x, 3) for x in pacs_s], "folder_build_s": [round(x, 3) for x in folder_s],
            "pacs_fetch_only_s": [round(x, 3) for x in fetch_s],
            "pacs_fetch_only_studies_per_s_listed": round(30 / statistics.median(fetch_s), 1),
            "pacs_studies_per_s_listed": round(30 / pacs, 2), "pacs_studies_per_s_indexed": round(25 / pacs, 2),
            "folder_studies_per_s": round(25 / folder, 2),
            "pacs_over_folder": target(ratio, 1.5, "max", "x"),
        },
    }
    report["machine"]["load_average_at_start"] = load_at_start
    emit(report)
    return report


if __name__ == "__main__":
    main()

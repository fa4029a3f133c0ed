"""A bundle: one trained run + its index (+ optionally its images) in one folder, checksummed.

Why: train where the GPU is (e.g. BiomedCLIP on IU X-ray), serve on a CPU Hugging Face Space.
The Space only needs this folder (or a Hugging Face *dataset* repo holding it):

    python -m index.bundle pack --run RUN --index IDX --out BUNDLE [--images]
    python -m index.bundle verify BUNDLE
    python app.py --bundle BUNDLE            # or --bundle OWNER/DATASET (downloaded when online)

Layout::

    BUNDLE/bundle.json     format, what was packed, and the sha256 + size of every other file
    BUNDLE/run/            the run folder's files (config.json, head.safetensors, eval.json, ...)
    BUNDLE/index/          the index folder (its own manifest.json still guards it)
    BUNDLE/images/         with --images: the indexed images; index/meta.sqlite then stores
                           paths relative to this folder (the index manifest is rewritten for it)

Opening a bundle checks every file against ``bundle.json`` before anything is loaded, so a
bundle damaged in transit is refused with the file's name. Offline (``HF_HUB_OFFLINE=1``) a hub
id fails at once with what to do instead.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from data.errors import BundleError, BundleCorruptError  # noqa: F401 (defined in data.errors, re-exported)
from data.atomic_io import atomic_write_json
from index.manifest import DATA_FILES, MANIFEST, META, IndexLoadError, file_digest, now_iso, read_manifest, verify_files, write_manifest

BUNDLE_FILE = "bundle.json"
BUNDLE_FORMAT = 1
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class Bundle:
    root: Path
    run_dir: Path
    index_dir: Path
    data_root: Path | None  # the bundled images, when packed with them
    info: dict


# ------------------------------------------------------------------------------------ pack
def pack(run_dir: Path | str, index_dir: Path | str, out: Path | str, images: bool = False) -> Bundle:
    """Copy a run and its index (and with ``images`` the indexed images) into ``out``; write bundle.json last."""
    run_dir, index_dir, out = Path(run_dir), Path(index_dir), Path(out)
    manifest = read_manifest(index_dir)
    verify_files(index_dir, manifest)  # never pack a damaged index
    config = json.loads((run_dir / "config.json").read_text())
    if str(config.get("head_sha256", "")) != manifest.head_checksum:
        raise BundleError(f"index {index_dir} was built for head {manifest.head_checksum[:12]}..., not the run "
                          f"{run_dir} (head {str(config.get('head_sha256', ''))[:12]}...); pack the matching pair")
    if out.exists() and any(out.iterdir()):
        raise BundleError(f"{out} exists and is not empty; choose a new folder")
    (out / "run").mkdir(parents=True, exist_ok=True)
    for f in sorted(run_dir.iterdir()):
        if f.is_file():
            shutil.copy2(f, out / "run" / f.name)
    (out / "index").mkdir()
    for name in manifest.files:
        shutil.copy2(index_dir / name, out / "index" / name)
    shutil.copy2(index_dir / MANIFEST, out / "index" / MANIFEST)
    n_images = _bundle_images(out, manifest) if images else 0
    files = {str(p.relative_to(out)): file_digest(p) for p in sorted(out.rglob("*")) if p.is_file()}
    info = {"format": BUNDLE_FORMAT, "created_at": now_iso(), "backbone_id": manifest.backbone_id,
            "backbone_name": config.get("backbone_name"), "head_checksum": manifest.head_checksum,
            "count": manifest.count, "images": n_images if images else None, "files": files}
    atomic_write_json(out / BUNDLE_FILE, info)
    return open_bundle(out)


def _bundle_images(out: Path, manifest) -> int:
    """Copy every indexed image under out/images and point the bundled meta.sqlite at them."""
    db = out / "index" / META
    root = Path(manifest.data_root) if manifest.data_root else None
    conn = sqlite3.connect(db)
    try:
        records = {rid: json.loads(rec) for rid, rec in conn.execute("SELECT row_id, record FROM items ORDER BY row_id")}
        resolved = {rid: [_resolve(p, root) for p in rec.get("image_paths", [])] for rid, rec in records.items()}
        every = [p for ps in resolved.values() for p in ps]
        missing = [p for p in every if not p.is_file()]
        if missing:
            raise BundleError(f"{len(missing)} indexed images are missing (e.g. {missing[0]}); "
                              "pack without --images or fix the data root")
        common = Path(os.path.commonpath([str(p.parent) for p in every])) if every else Path("/")
        for rid, ps in resolved.items():
            rel = [str(p.relative_to(common)) for p in ps]
            for p, r in zip(ps, rel):
                (out / "images" / r).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(p, out / "images" / r)
            record = {**records[rid], "image_paths": rel}  # the store's one JSON record per study (index.store)
            conn.execute("UPDATE items SET record = ? WHERE row_id = ?", (json.dumps(record), rid))
        conn.commit()
    finally:
        conn.close()
    manifest.data_root = None
    write_manifest(out / "index", manifest, tuple(n for n in manifest.files if n not in DATA_FILES))
    return len(every)


def _resolve(stored: str, root: Path | None) -> Path:
    p = Path(stored)
    return p if p.is_absolute() or root is None else root / p


# ------------------------------------------------------------------------------------ open
def open_bundle(ref: Path | str) -> Bundle:
    """A bundle folder, or a Hugging Face dataset id (downloaded when online); checksums verified."""
    path = Path(ref).expanduser()
    if path.exists():
        return _verified(path)
    if _HUB_ID.match(str(ref)):
        return _verified(_download(str(ref)))
    raise BundleError(f"no bundle at {ref}: give a bundle folder (python -m index.bundle pack ...) "
                      "or a Hugging Face dataset id like OWNER/NAME")


def _download(repo_id: str) -> Path:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise BundleError(
            f"{repo_id!r} is a Hugging Face dataset id, but HF_HUB_OFFLINE is set, so it cannot be downloaded. "
            f"Download it where the hub is reachable (`huggingface-cli download {repo_id} --repo-type dataset "
            "--local-dir BUNDLE`) and pass --bundle BUNDLE, or unset HF_HUB_OFFLINE.")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=repo_id, repo_type="dataset"))
    except Exception as exc:  # network, auth, missing repo: one line for the user
        raise BundleError(f"could not download the bundle {repo_id!r} from the Hugging Face hub: "
                          f"{' '.join(str(exc).split())[:300]}") from None


def _verified(root: Path) -> Bundle:
    meta = root / BUNDLE_FILE
    if not meta.is_file():
        raise BundleError(f"{root} is not a bundle: it has no {BUNDLE_FILE} (make one with python -m index.bundle pack)")
    try:
        info = json.loads(meta.read_text())
        files = dict(info["files"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleCorruptError(f"{meta} is unreadable ({exc}); re-pack or re-download the bundle") from None
    if info.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{root} has bundle format {info.get('format')!r}; this code reads {BUNDLE_FORMAT}")
    for rel, expected in files.items():
        p = root / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            raise BundleCorruptError(f"{meta} names a file outside the bundle: {rel!r}")
        if not p.is_file():
            raise BundleCorruptError(f"bundle file {rel} is missing; re-pack or re-download the bundle")
        actual = file_digest(p)
        if actual != expected:
            raise BundleCorruptError(f"bundle file {rel} fails its checksum (sha256 {actual['sha256'][:12]}... "
                                     f"vs {str(expected.get('sha256'))[:12]}... in {BUNDLE_FILE}); the bundle is damaged")
    images = root / "images"
    return Bundle(root, root / "run", root / "index", images if info.get("images") else None, info)


# ------------------------------------------------------------------------------------ CLI
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m index.bundle", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pk = sub.add_parser("pack", help="pack a run + its index into a bundle folder")
    pk.add_argument("--run", required=True, help="trained run folder")
    pk.add_argument("--index", required=True, help="index folder built for that run")
    pk.add_argument("--out", required=True, help="new bundle folder")
    pk.add_argument("--images", action="store_true", help="also copy the indexed images (needed to show them)")
    vf = sub.add_parser("verify", help="check a bundle's checksums")
    vf.add_argument("bundle")
    args = p.parse_args(argv)
    try:
        b = pack(args.run, args.index, args.out, args.images) if args.cmd == "pack" else open_bundle(args.bundle)
    except (BundleError, IndexLoadError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"bundle {b.root}: {len(b.info['files'])} files verified, {b.info['count']} studies, "
          f"images {'included' if b.data_root else 'not included'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

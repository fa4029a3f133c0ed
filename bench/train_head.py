"""Head training time on cached frozen features (train.py step 2 only). Prints ONE JSON document.

    python -m bench.train_head            # full demo size (3,955 studies), ~0.5-1 min on 2 cores

Times ``model.training.train_head`` - the very function ``python train.py`` runs - with train.py's
default options, on the offline backbone's features of the full demo dataset:

* the real cached features when the full demo has been embedded already (``python app.py``
  or ``python train.py`` once), read from the feature cache;
* otherwise synthetic features of the same shapes (3,955 x 1792 image, 3,955 x 384 report),
  with the real IU labels and patient split and a learnable image-report pairing, so a clean
  checkout needs neither the 3,955 phantoms nor their embedding. Time per epoch depends only
  on the shapes; the number of epochs before early stopping depends on the data, so the
  report also gives the worst case (all ``--epochs`` without early stopping), projected from
  the measured time per epoch.

Also compares 1 thread with every core (seconds per epoch over 4 epochs, alternately) and the
per-epoch validation score before (through evaluation.tables) and after (model.training.validation_score).
"""
from __future__ import annotations

import argparse
import os
from types import SimpleNamespace
from typing import Any

import numpy as np

from bench.common import emit, log, machine, setup_environment, stopwatch, target


def offline_backbone_identity() -> SimpleNamespace:
    """What the feature cache key needs, without loading the towers (seconds saved)."""
    from model.backbones import OFFLINE_BACKBONE_ID, OFFLINE_GRID, OfflineBackbone
    from model.transform import IMAGENET_MEAN, IMAGENET_STD, preprocess_identity

    # EfficientNet-Lite0's blocks[4] (112 channels) pooled on the OFFLINE_GRID, MiniLM-L6's 384 dims
    return SimpleNamespace(name="offline", backbone_id=OFFLINE_BACKBONE_ID, image_dim=112 * OFFLINE_GRID ** 2, text_dim=384,
                           preprocess_id=preprocess_identity(OfflineBackbone.image_size, IMAGENET_MEAN, IMAGENET_STD))


def cached_demo_features(backbone) -> tuple[list, np.ndarray, np.ndarray] | None:
    """(studies, image, text) from the feature cache of the full demo, or None if not all there."""
    from data.dataset import load_dataset
    from data.demo import demo_dir
    from model.features import CHUNK, feature_cache_dir

    folder = demo_dir()
    if not (folder / "dataset.json").is_file():
        return None
    try:
        studies = load_dataset(folder)
    except Exception:  # noqa: BLE001 - an unfinished demo is simply "not cached"
        return None
    cache = feature_cache_dir(backbone, studies)
    images, texts = [], []
    for c in range((len(studies) + CHUNK - 1) // CHUNK):
        path = cache / f"chunk{c:05d}.npz"
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as z:
            images.append(z["image"])
            texts.append(z["text"])
    return studies, np.concatenate(images), np.concatenate(texts)


def synthetic_features(studies, image_dim: int, text_dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors with a shared latent per study (so image<->report pairing is learnable)
    and a label direction (so normal/abnormal is), plus noise."""
    rng = np.random.default_rng(seed)
    n, latent = len(studies), 64
    z = rng.standard_normal((n, latent)).astype(np.float32)
    label = np.array([s.label for s in studies], dtype=np.float32)[:, None]

    def tower(dim: int) -> np.ndarray:
        mix = rng.standard_normal((latent, dim)).astype(np.float32) / np.sqrt(latent)
        direction = rng.standard_normal(dim).astype(np.float32)
        x = z @ mix + 0.5 * label * direction / np.linalg.norm(direction) * np.sqrt(dim) / 8
        x += 0.7 * rng.standard_normal((n, dim)).astype(np.float32)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return tower(image_dim), tower(text_dim)


def run(threads_compare: bool = True, epochs: int | None = None) -> dict[str, Any]:
    """``epochs``: cap the timed run (``--quick``: a smoke run; default train.py's, with early stopping)."""
    setup_environment()
    import torch

    from data.split import patient_split
    from model.training import train_head
    from pipeline.options import parse_training_args
    from model.findings_training import study_codes
    from runtime.threads import TRAIN_THREADS_ENV, available_cores, training_threads

    backbone = offline_backbone_identity()
    found = cached_demo_features(backbone)
    if found is not None:
        studies, image_feats, text_feats = found
        source = "real: offline-backbone features of the full demo, from the feature cache"
    else:
        from data.demo import demo_study
        from data.iu_xray import load_iu_reports

        studies = [demo_study(s) for s in load_iu_reports()]
        image_feats, text_feats = synthetic_features(studies, backbone.image_dim, backbone.text_dim)
        source = ("synthetic: demo not embedded yet; same shapes, real IU labels and patient split "
                  "(run python train.py once for the real features)")
    log(f"train_head: {len(studies)} studies, features {source.split(':')[0]}")
    args = parse_training_args(["--quiet"])  # train.py's defaults
    split = patient_split(studies, seed=args.seed)
    index_of = {s.study_id: i for i, s in enumerate(studies)}
    rows = {k: np.array([index_of[i] for i in split[k]], dtype=np.int64) for k in split}
    labels = np.array([s.label for s in studies], dtype=np.int64)
    codes = study_codes(studies)[0]  # finding profiles: nDCG early stopping, finding-aware SupCon
    Xi, Xt = torch.from_numpy(image_feats), torch.from_numpy(text_feats)
    y = torch.from_numpy(labels).float()

    # The side-swap and phrase-view terms train on cached features of the real towers (pipeline.steps);
    # on synthetic features there are none, so those two terms are off and the note says so.
    extras: tuple = (None, None, None)
    if found is not None:
        from model.factory import create_backbone
        from pipeline.steps import training_image_inputs, training_text_inputs

        backbone_towers = create_backbone("offline")
        Xt, *extras = training_text_inputs(args, backbone_towers, studies, rows["train"], text_feats)
        extras.append(training_image_inputs(args, backbone_towers, studies, progress=False))
    else:
        source += "; side-swap, phrase-view, flip-twin and knowledge inputs off (they need the real towers' features)"

    def once(threads: int | None = None, epochs: int | None = None, patience: int | None = None) -> dict[str, Any]:
        """train_head as train.py runs it; ``threads`` overrides the policy's count."""
        run_args = parse_training_args(["--quiet"] + ([] if found is not None else ["--w-side", "0", "--w-phrase", "0", "--knowledge", "0",
                                                                                "--w-flip", "0"]))
        if epochs is not None:
            run_args.epochs = epochs
        if patience is not None:
            run_args.patience = patience
        torch.manual_seed(run_args.seed)
        saved = os.environ.get(TRAIN_THREADS_ENV)
        if threads is not None:
            os.environ[TRAIN_THREADS_ENV] = str(threads)
        try:
            used = training_threads()
            with stopwatch() as t:
                trained = train_head(run_args, backbone.image_dim, backbone.text_dim, Xi, Xt, y, rows, labels, codes,
                                     swapped=extras[0], views=extras[1], flipped=extras[2])
        finally:
            if saved is None:
                os.environ.pop(TRAIN_THREADS_ENV, None)
            else:
                os.environ[TRAIN_THREADS_ENV] = saved
        epochs_run = len(trained.history)
        return {"threads": used, "seconds": round(trained.seconds, 2), "cpu_s": round(t["cpu_s"], 2),
                "epochs_run": epochs_run, "best_epoch": trained.best_epoch,
                "seconds_per_epoch": round(trained.seconds / max(1, epochs_run), 3),
                "best_val_score": round(max(h["val_score"] for h in trained.history), 4)}

    cores = available_cores()
    default = once(epochs=epochs)  # the thread policy of runtime.threads (what train.py does)
    val = rows["val"]
    from model.head import RetrievalHead

    head = RetrievalHead(backbone.image_dim, backbone.text_dim,  # the cost does not depend on the weights
                         knowledge_dim=Xt.shape[1] - backbone.text_dim, knowledge_scale=args.knowledge)
    log(f"train_head: {default['epochs_run']} epochs in {default['seconds']}s on {default['threads']} thread(s)")
    worst = round(default["seconds_per_epoch"] * args.epochs, 1)
    out: dict[str, Any] = {
        "features": source,
        "n_studies": len(studies), "n_train": int(len(rows["train"])), "n_val": int(len(rows["val"])),
        "image_dim": backbone.image_dim, "text_dim": backbone.text_dim,
        "options": {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "patience", "loss", "embed_dim", "hidden_dim")},
        "train_head": default,
        "train_head_s": target(default["seconds"], 60, "max", " s"),
        "worst_case_all_epochs_s_projected": target(worst, 60, "max", " s"),
    }
    out["validation_score_before_after"] = v = _validation_before_after(head, Xi[val], Xt[val], labels[val])
    out["train_head_before_projected_s"] = round(
        default["seconds"] + default["epochs_run"] * (v["before_ms"] - v["after_ms"]) / 1e3, 1)  # same epochs, old validation
    if threads_compare and cores > 1:
        # seconds per epoch over a fixed 4 epochs (no early stop), alternately, same process
        per_epoch: dict[int, list[float]] = {1: [], cores: []}
        for _ in range(2):
            for threads in per_epoch:
                per_epoch[threads].append(once(threads, epochs=4, patience=99)["seconds_per_epoch"])
        out["thread_policy_s_per_epoch"] = {f"{k}_thread{'s' if k > 1 else ''}": round(float(np.median(v)), 3)
                                            for k, v in per_epoch.items()}
    return out


def _validation_before_after(head, xi, xt, labels, reps: int = 3) -> dict[str, Any]:
    """The per-epoch validation score: through evaluation.tables (the code before: it also
    computes mAP and i2i) vs model.training.validation_score now."""
    import time

    from evaluation.tables import evaluate_embeddings
    from pipeline.run_report import project
    from model.training import validation_score

    def before() -> float:
        m = evaluate_embeddings(project(head, xi, "image"), project(head, xt, "text"), labels, n_bootstrap=0)
        return float(np.mean([m[d][k] for d in ("i2t", "t2i") for k in ("R@10", "P@10")]))

    def timed(fn) -> tuple[float, float]:
        times, value = [], None
        for _ in range(reps):
            t0 = time.perf_counter()
            value = fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return float(np.median(times)), value

    before_ms, old = timed(before)
    after_ms, new = timed(lambda: validation_score(head, xi, xt, labels))
    return {"n_val": int(len(labels)), "before_ms": round(before_ms, 1), "after_ms": round(after_ms, 1),
            "speedup": round(before_ms / after_ms, 1), "same_score": old == new}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--no-thread-compare", action="store_true", help="skip the 1-thread vs all-cores rerun")
    p.add_argument("--epochs", type=int, help="at most this many epochs (default: train.py's, early stopping)")
    args = p.parse_args(argv)
    report = {"machine": machine(), "train_head": run(threads_compare=not args.no_thread_compare, epochs=args.epochs)}
    report["machine"]["load_average_at_end"] = machine()["load_average"]
    emit(report)
    return report


if __name__ == "__main__":
    main()

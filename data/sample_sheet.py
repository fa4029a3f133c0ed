"""A contact sheet of demo phantoms with their reports' findings as captions (PNG).

Why: a reviewer should be able to see at a glance that the synthetic films look like chest
radiographs and that each finding sits where its report says (patient's left = image right).

    python -m data.sample_sheet --out .cache/sample_sheet.png
"""
from __future__ import annotations

import argparse
import io
import textwrap
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from data.phantom import DEFAULT_SIZE, render_study
from data.records import Study

# What the sheet shows, in order: one study per predicate over its (lower-cased) tags.
Wanted = tuple[str, Callable[[list[str]], bool]]


def _has(prefix: str) -> Callable[[list[str]], bool]:
    return lambda tags: any(t.startswith(prefix) for t in tags)


WANTED: tuple[Wanted, ...] = (
    ("normal", lambda tags: tags == ["normal"]),
    ("normal", lambda tags: tags == ["normal"]),
    ("cardiomegaly", lambda tags: any(t in ("cardiomegaly/moderate", "cardiomegaly/severe") for t in tags)),
    ("left effusion", _has("pleural effusion/left")),
    ("right effusion", _has("pleural effusion/right")),
    ("pneumothorax", _has("pneumothorax/right")),
    ("upper lobe opacity", lambda tags: any(t.startswith(("opacity", "pneumonia", "airspace disease")) and "upper lobe" in t for t in tags)),
    ("basal atelectasis", _has("pulmonary atelectasis/base/bilateral")),
    ("nodule or mass", lambda tags: any(t.startswith(("nodule/lung", "mass/lung")) for t in tags)),
    ("calcified granuloma", _has("calcified granuloma/lung")),
    ("catheter", _has("catheters, indwelling/")),
    ("pacemaker", _has("implanted medical device/left")),
    ("scoliosis", _has("scoliosis/")),
    ("hyperinflation", lambda tags: any(t.startswith(("emphysema", "lung/hyperdistention")) for t in tags)),
    ("edema", _has("pulmonary edema")),
    ("sternotomy", _has("surgical instruments/mediastinum")),
)


def pick_studies(studies: Sequence[Study], wanted: Sequence[Wanted] = WANTED) -> list[Study]:
    """One study per wanted finding, preferring reports with the fewest tags (clean captions)."""
    ranked = sorted(studies, key=lambda s: len(s.tags))  # stable: keeps id order among equals
    chosen: list[Study] = []
    taken: set[str] = set()
    for _, match in wanted:
        for s in ranked:
            if s.study_id not in taken and match([t.lower() for t in s.tags]):
                chosen.append(s)
                taken.add(s.study_id)
                break
    return chosen


def caption(study: Study, width: int = 34, lines: int = 3) -> str:
    text = f"{study.study_id}: " + "; ".join(study.tags)
    wrapped = textwrap.wrap(text, width=width)
    if len(wrapped) > lines:
        wrapped = wrapped[:lines]
        wrapped[-1] = wrapped[-1][: width - 1] + "…"
    return "\n".join(wrapped)


def render_sheet(studies: Sequence[Study], seed: int = 0, size: int = DEFAULT_SIZE, cols: int = 4) -> bytes:
    """The sheet as PNG bytes: phantoms in a grid, each captioned with its study's tags."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = -(-len(studies) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.6, rows * 3.05), dpi=100)
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, study in zip(np.ravel(axes), studies):
        ax.imshow(render_study(study, seed=seed, size=size), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(caption(study), fontsize=7, loc="left", family="DejaVu Sans")
    fig.suptitle("Synthetic PA phantoms of real IU X-ray reports (patient's left = image right)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white")
    plt.close(fig)
    # Grayscale, 64 grey levels, optimised zlib: the film noise would otherwise make the
    # committed copy ~600 KB; 6-bit grey is indistinguishable on screen.
    grey = np.asarray(Image.open(buf).convert("L"), dtype=np.uint8)
    grey = (grey & 0xFC) | 0x02
    out = io.BytesIO()
    Image.fromarray(grey, mode="L").save(out, format="PNG", optimize=True)
    return out.getvalue()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Render a captioned grid of demo phantoms.")
    parser.add_argument("--out", type=Path, required=True, help="PNG path to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE)
    args = parser.parse_args(argv)
    from data.iu_xray import load_iu_reports

    studies = pick_studies(load_iu_reports())
    png = render_sheet(studies, seed=args.seed, size=args.size)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(png)
    print(f"wrote {args.out} ({len(png) // 1024} KB, {len(studies)} phantoms)")


if __name__ == "__main__":
    main()

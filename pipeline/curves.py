"""curves.png of a run folder: the loss terms and the early-stopping score, epoch by epoch."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_curves(history: list[dict[str, float]], path: Path) -> None:
    """Training loss terms and the validation score per epoch, written atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key in sorted(k for k in history[0] if k not in ("epoch", "val_score", "lr")):
        ax_loss.plot(epochs, [h.get(key, np.nan) for h in history], label=key)
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="Training loss")
    ax_loss.legend()
    ax_val.plot(epochs, [h["val_score"] for h in history], color="tab:green")
    ax_val.set(xlabel="epoch", ylabel="validation score (see --val-metric)", title="Validation score")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)

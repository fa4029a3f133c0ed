"""A frozen cross-modal baseline for towers without a shared space: ridge map from text to image features.

Why: with unrelated image and text towers (the offline backbone) "frozen i2t/t2i" is otherwise a
random projection, i.e. chance. The fair frozen baseline learns the least it can - one linear map
fitted in closed form on the *training split only* - so the head's gain over it is what the MLP
and its losses add. Image features are standardised with training statistics; the penalty is
chosen on the validation split.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

LAMBDAS = (1.0, 10.0, 100.0, 1000.0)


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass
class RidgeTextToImage:
    """t -> (t - mu_t) W, compared by cosine with (x - mu_x) / sd_x."""

    mu_t: np.ndarray
    mu_x: np.ndarray
    sd_x: np.ndarray
    W: np.ndarray
    lam: float

    @classmethod
    def fit(cls, text: np.ndarray, image: np.ndarray, lam: float) -> "RidgeTextToImage":
        t, x = text.astype(np.float64), image.astype(np.float64)
        mu_t, mu_x, sd_x = t.mean(0), x.mean(0), x.std(0) + 1e-6
        tc, xc = t - mu_t, (x - mu_x) / sd_x
        W = np.linalg.solve(tc.T @ tc + lam * len(t) * np.eye(t.shape[1]), tc.T @ xc)
        return cls(mu_t, mu_x, sd_x, W, lam)

    def encode_image(self, image: np.ndarray) -> np.ndarray:
        return _l2((image.astype(np.float64) - self.mu_x) / self.sd_x)

    def encode_text(self, text: np.ndarray) -> np.ndarray:
        return _l2((text.astype(np.float64) - self.mu_t) @ self.W)


def fit_on_train(text: np.ndarray, image: np.ndarray, train: np.ndarray, val: np.ndarray,
                 score: Callable[[np.ndarray, np.ndarray, np.ndarray], float],
                 lambdas: Sequence[float] = LAMBDAS) -> RidgeTextToImage:
    """Fit on ``train`` rows for each penalty; keep the best ``score(image_emb, text_emb, val_rows)``."""
    best, best_score = None, -np.inf
    for lam in lambdas:
        m = RidgeTextToImage.fit(text[train], image[train], lam)
        s = score(m.encode_image(image[val]), m.encode_text(text[val]), val)
        if s > best_score:
            best, best_score = m, s
    return best

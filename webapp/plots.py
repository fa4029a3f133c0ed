"""Interactive plotly maps of the gallery: normal vs abnormal, frozen beside fine-tuned."""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go

COLOURS = {0: "#2e7d32", 1: "#c62828"}
NAMES = {0: "normal", 1: "abnormal"}
SPACE_TITLES = {"frozen": "Frozen backbone", "finetuned": "Fine-tuned head"}


class EmbeddingMaps:
    """The run's ``embedding_map.json`` plus hover text, ready to draw."""

    def __init__(self, data: dict[str, Any], impressions: dict[str, str]):
        self.ids: list[str] = data["ids"]
        self.labels = np.asarray(data["labels"], dtype=int)
        self.maps = {space: {m: np.asarray(c, dtype=np.float32) for m, c in methods.items()}
                     for space, methods in data["maps"].items()}
        self.row_of = {sid: i for i, sid in enumerate(self.ids)}
        self.hover = [f"{html.escape(sid)}<br>{_wrap(html.escape(impressions.get(sid, '')))}" for sid in self.ids]

    @classmethod
    def load(cls, path: Path, impressions: dict[str, str]) -> "EmbeddingMaps | None":
        if not Path(path).is_file():
            return None
        return cls(json.loads(Path(path).read_text()), impressions)

    @property
    def methods(self) -> list[str]:
        return sorted({m for methods in self.maps.values() for m in methods})

    def query_point(self, space: str, method: str, neighbour_ids: Sequence[str], scores: Sequence[float]) -> tuple[float, float] | None:
        """Similarity-weighted mean position of the query's nearest gallery studies."""
        rows = [self.row_of[s] for s in neighbour_ids if s in self.row_of]
        if not rows:
            return None
        w = np.exp((np.asarray(scores[: len(rows)], dtype=np.float64) - max(scores[: len(rows)])) / 0.05)
        xy = (self.maps[space][method][rows] * w[:, None]).sum(axis=0) / w.sum()
        return float(xy[0]), float(xy[1])

    def figure(self, space: str, method: str, query: dict[str, Any] | None = None) -> go.Figure:
        coords = self.maps[space][method]
        fig = go.Figure()
        for label in (0, 1):
            mask = self.labels == label
            fig.add_trace(go.Scattergl(
                x=coords[mask, 0], y=coords[mask, 1], mode="markers", name=NAMES[label],
                marker={"size": 5, "color": COLOURS[label], "opacity": 0.6},
                text=[self.hover[i] for i in np.flatnonzero(mask)], hoverinfo="text",
            ))
        if query:
            point = self.query_point(space, method, query["neighbour_ids"], query["scores"])
            if point is not None:
                from webapp.trust import star_label

                name = star_label("your query", query.get("familiarity"))
                fig.add_trace(go.Scatter(
                    x=[point[0]], y=[point[1]], mode="markers+text", name=name, text=[name], textposition="top center",
                    marker={"symbol": "star", "size": 20, "color": "#ffb300", "line": {"width": 1.5, "color": "black"}},
                    hovertext=[star_label(query.get("label", "query"), query.get("familiarity"))], hoverinfo="text",
                ))
        fig.update_layout(
            title=f"{SPACE_TITLES.get(space, space)} · {method.upper()}", height=480, margin={"l": 10, "r": 10, "t": 40, "b": 10},
            legend={"orientation": "h", "y": -0.05}, xaxis={"visible": False}, yaxis={"visible": False},
            template="plotly_white",
        )
        return fig


def _wrap(text: str, width: int = 60) -> str:
    words, lines, line = text.split(), [], ""
    for w in words:
        if len(line) + len(w) > width:
            lines.append(line)
            line = ""
        line += (" " if line else "") + w
    lines.append(line)
    return "<br>".join(lines[:4])

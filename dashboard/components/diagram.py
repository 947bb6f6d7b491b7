"""The factorised layer drawn as a chain of tensors and layers, from ``Decomposition.stages(...)``.

A pure function of the stages (anything with ``name, op, in_shape, out_shape, params, macs``): boxes are the
activation tensors (C x H x W, height growing with the channel count), arrows the layers with their parameters
and MACs at the current ranks. Labels are text traces rather than annotations: plotly validates every
annotation on its own, and the live view redraws this figure on each slider move.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go

from dashboard.components import fmt
from kcp.costs import Stage

_BOX_W = 1.0
_GAP = 2.2
_STEP = _BOX_W + _GAP


def _height(channels: int, widest: int) -> float:
    return 0.5 + 1.5 * math.log1p(channels) / math.log1p(max(widest, 1))


def _text(x: list[float], y: list[float], text: list[str], size: int, position: str,
          colour: str = "#222") -> go.Scatter:
    return go.Scatter(x=x, y=y, text=text, mode="text", textposition=position, hoverinfo="skip",
                      textfont={"size": size, "color": colour}, showlegend=False)


def structure(stages: Sequence[Stage], title: str = "", colour: str = "#d62728") -> go.Figure:
    """Tensors as boxes and the layers between them as labelled arrows, left to right."""
    tensors = [stages[0].in_shape, *(s.out_shape for s in stages)] if stages else []
    widest = max((t[0] for t in tensors), default=1)
    heights = [_height(t[0], widest) for t in tensors]
    centres = [i * _STEP + _BOX_W / 2 for i in range(len(tensors))]
    shapes: list[dict[str, Any]] = [
        {"type": "rect", "x0": c - _BOX_W / 2, "x1": c + _BOX_W / 2, "y0": -h / 2, "y1": h / 2,
         "line": {"color": "#444"}, "fillcolor": "#dde6f3" if i in (0, len(tensors) - 1) else "#f6dcdc",
         "layer": "below"}
        for i, (c, h) in enumerate(zip(centres, heights))
    ]
    names = ["input", *(f"after {s.name}" for s in stages[:-1]), "output"] if stages else []
    mids = [i * _STEP + _BOX_W + _GAP / 2 for i in range(len(stages))]
    arrows = [{"x": m + _GAP / 2 - 0.05, "y": 0, "ax": m - _GAP / 2 + 0.05, "ay": 0, "xref": "x", "yref": "y",
               "axref": "x", "ayref": "y", "showarrow": True, "arrowhead": 3, "arrowsize": 1.2, "arrowwidth": 2,
               "arrowcolor": colour, "text": ""} for m in mids]
    fig = go.Figure([
        _text(centres, [0] * len(tensors), [f"<b>{fmt.shape(t)}</b>" for t in tensors], 12, "middle center"),
        _text(centres, [-h / 2 - 0.05 for h in heights], names, 10, "bottom center", "#666"),
        _text(mids, [0.1] * len(stages), [f"<b>{s.name}</b><br>{s.op}" for s in stages], 11, "top center"),
        _text(mids, [-0.1] * len(stages), [f"{fmt.count(s.params)} params<br>{fmt.si(s.macs)} MACs"
                                           for s in stages], 10, "bottom center"),
    ])
    span = max(len(tensors), 1) * _STEP - _GAP
    fig.update_layout(
        shapes=shapes, annotations=arrows, height=300, title={"text": title}, showlegend=False,
        plot_bgcolor="white", margin={"l": 10, "r": 10, "t": 50 if title else 10, "b": 10},
        xaxis={"visible": False, "range": [-0.3, span + 0.3], "fixedrange": True},
        yaxis={"visible": False, "range": [-1.5, 1.3], "fixedrange": True},
    )
    return fig

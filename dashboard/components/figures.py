"""Plotly figures as pure functions: plain rows and arrays in, a ``go.Figure`` out (no Streamlit, no kcp maths).

Rows are the dicts that ``kcp.sweep.sweep`` and ``kcp.evaluate.evaluate`` return.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboard.components import fmt
from kcp.methods import METHODS
from kcp.schema import BY_NAME

METHOD_LABELS = {name: m.label for name, m in METHODS.items()}
METHOD_COLORS = {name: m.color for name, m in METHODS.items()}

# The metrics a figure can put on an axis: their labels and scales come from the row schema.
METRICS: dict[str, tuple[str, bool]] = {
    name: (BY_NAME[name].label, BY_NAME[name].log)
    for name in ("rel_error", "output_rel_error", "top1_agreement", "params", "macs", "latency_ms", "compression")
}

# The heatmap's plot area at its widest (a wide page) and its height, and the spacing of its click targets.
PLOT_PX, TILE_PX = (1400, 300), 20
CLICK_HINT = "click a cell to move the sliders there"


def plot_config(name: str) -> dict[str, Any]:
    """``st.plotly_chart`` config: the modebar's camera button saves a PNG in the browser (works offline)."""
    return {
        "displaylogo": False,
        "toImageButtonOptions": {"format": "png", "filename": name, "scale": 2},
    }


def _number(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _show(metric: str, value: float | None) -> str:
    if value is None:
        return ""
    if metric in ("params", "macs"):
        return fmt.si(value)
    if metric == "latency_ms":
        return fmt.ms(value)
    if metric == "top1_agreement":
        return fmt.percent(value)
    if metric == "compression":
        return fmt.ratio(value)
    return f"{value:.3f}"


def kcp_grid(rows: Iterable[Mapping[str, Any]]) -> tuple[list[int], list[int], dict[tuple[int, int], Mapping]]:
    """The KT ranks, CP ranks and KCP rows by (R, K) of a sweep's rows (a cancelled sweep leaves holes)."""
    cells = {(int(r["kt_rank"]), int(r["cp_rank"])): r for r in rows if r.get("method") == "kcp"}
    return sorted({k[0] for k in cells}), sorted({k[1] for k in cells}), cells


def heatmap(rows: Sequence[Mapping[str, Any]], metric: str, current: tuple[int, int] | None = None,
            kt_ranks: Sequence[int] | None = None, cp_ranks: Sequence[int] | None = None) -> go.Figure:
    """KT rank x CP rank heatmap of one metric of the KCP rows, the sliders' point outlined.

    Every cell also carries an invisible marker (heatmaps cannot be selected, markers can) whose
    ``customdata`` is ``[R, K]``, so a click on a cell can move the sliders. ``kt_ranks``/``cp_ranks``
    fix the axes (points not computed yet stay blank).
    """
    found_kt, found_cp, cells = kcp_grid(rows)
    kt_ranks, cp_ranks = list(kt_ranks or found_kt), list(cp_ranks or found_cp)
    label, log = METRICS[metric]
    values = [[_number(cells[(r, k)].get(metric)) if (r, k) in cells else None for k in cp_ranks] for r in kt_ranks]
    colour = [[None if v is None or (log and v <= 0) else (math.log10(v) if log else v) for v in row]
              for row in values]
    xs, ys = [str(k) for k in cp_ranks], [str(r) for r in kt_ranks]
    fig = go.Figure()
    colorbar: dict[str, Any] = {"title": {"text": label, "side": "right"}}
    flat = [v for row in colour for v in row if v is not None]
    if log and flat:
        ticks = list(range(math.floor(min(flat)), math.ceil(max(flat)) + 1))
        colorbar.update(tickvals=ticks, ticktext=[fmt.si(10.0**t) for t in ticks])
    reverse = metric in ("rel_error", "output_rel_error", "params", "macs", "latency_ms")
    fig.add_trace(go.Heatmap(
        z=colour, x=xs, y=ys, colorscale="Viridis", reversescale=reverse, colorbar=colorbar,
        text=[[_show(metric, v) for v in row] for row in values], texttemplate="%{text}",
        hoverinfo="skip", name=label,
    ))
    # Plotly selects markers, not heatmap cells, and a marker is a fixed-size square: one per cell left most of
    # a wide cell dead. So each cell is tiled with overlapping invisible markers (on a numeric overlay of the
    # category axes), all carrying the cell's [R, K]: a click anywhere in it selects it.
    nx, ny = cell_tiles(len(cp_ranks), len(kt_ranks))
    tiles = [(i - 0.5 + (a + 0.5) / nx, j - 0.5 + (b + 0.5) / ny, r, k, v)
             for j, (r, row) in enumerate(zip(kt_ranks, values)) for i, (k, v) in enumerate(zip(cp_ranks, row))
             for b in range(ny) for a in range(nx)]
    fig.add_trace(go.Scatter(
        x=[t[0] for t in tiles], y=[t[1] for t in tiles], xaxis="x2", yaxis="y2", mode="markers", name="cells",
        showlegend=False, marker={"symbol": "square", "size": TILE_PX + 4, "color": "rgba(0,0,0,0)"},
        customdata=[[t[2], t[3]] for t in tiles],
        text=[_show(metric, t[4]) or "not computed" for t in tiles],
        hovertemplate="R=%{customdata[0]} K=%{customdata[1]}<br>" + label + ": %{text}<extra></extra>",
    ))
    if current is not None and current[0] in kt_ranks and current[1] in cp_ranks:
        # A white outline inside a black one: visible on the light and the dark ends of the colour scale.
        fig.add_trace(go.Scatter(
            x=[str(current[1])] * 2, y=[str(current[0])] * 2, mode="markers", name="sliders", showlegend=False,
            marker={"symbol": "square-open", "size": [38, 32], "color": ["black", "white"],
                    "line": {"width": 3, "color": ["black", "white"]}},
            hoverinfo="skip",
        ))
    fig.update_layout(
        title={"text": f"KCP {label}"}, margin={"l": 60, "r": 20, "t": 50, "b": 50}, height=380,
        xaxis={"title": {"text": "CP rank K"}, "type": "category", "range": [-0.5, len(xs) - 0.5]},
        yaxis={"title": {"text": "KT rank R"}, "type": "category", "range": [-0.5, len(ys) - 0.5]},
        xaxis2={"overlaying": "x", "range": [-0.5, len(xs) - 0.5], "visible": False, "fixedrange": True},
        yaxis2={"overlaying": "y", "range": [-0.5, len(ys) - 0.5], "visible": False, "fixedrange": True},
        clickmode="event+select", dragmode=False,
    )
    return fig


def cell_tiles(columns: int, rows: int) -> tuple[int, int]:
    """Invisible markers per cell across and down, so that markers ``TILE_PX`` apart cover a cell of a plot up to
    ``PLOT_PX`` wide and high."""
    width, height = PLOT_PX
    return max(1, math.ceil(width / columns / TILE_PX)), max(1, math.ceil(height / rows / TILE_PX))


def ranks_from_selection(selection: Mapping[str, Any] | None) -> tuple[int, int] | None:
    """The (R, K) of the first clicked heatmap cell in a ``st.plotly_chart`` selection, or None."""
    points = ((selection or {}).get("selection") or {}).get("points") or []
    for point in points:
        data = point.get("customdata")
        if isinstance(data, (list, tuple)) and len(data) == 2:
            return int(data[0]), int(data[1])
        try:
            return int(point["y"]), int(point["x"])
        except (KeyError, TypeError, ValueError):
            continue
    return None


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both cost (x) and error (y), by increasing cost."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points):
        if not front or y < front[-1][1]:
            front.append((x, y))
    return front


def pareto(rows: Sequence[Mapping[str, Any]], x: str, y: str = "rel_error") -> go.Figure:
    """Error against a cost for every method's points, each method's Pareto front drawn, the dense layer a star."""
    x_label, x_log = METRICS[x]
    y_label, _ = METRICS[y]
    fig = go.Figure()
    methods = [m for m in METHOD_LABELS if m != "dense" and any(r.get("method") == m for r in rows)]
    for method in methods:
        pts = [(r, _number(r.get(x)), _number(r.get(y))) for r in rows if r.get("method") == method]
        pts = [(r, a, b) for r, a, b in pts if a is not None and b is not None and (a > 0 or not x_log)]
        if not pts:
            continue
        colour = METHOD_COLORS[method]
        fig.add_trace(go.Scatter(
            x=[a for _, a, _ in pts], y=[b for _, _, b in pts], mode="markers", name=METHOD_LABELS[method],
            legendgroup=method, marker={"color": colour, "size": 8, "opacity": 0.55},
            text=[point_label(r) for r, _, _ in pts],
            hovertemplate="%{text}<br>" + x_label + ": %{x:.4g}<br>" + y_label + ": %{y:.4f}<extra>"
            + METHOD_LABELS[method] + "</extra>",
        ))
        front = pareto_front([(a, b) for _, a, b in pts])
        fig.add_trace(go.Scatter(
            x=[a for a, _ in front], y=[b for _, b in front], mode="lines", line={"color": colour, "width": 2},
            legendgroup=method, showlegend=False, hoverinfo="skip", line_shape="hv",
        ))
    dense = next((r for r in rows if r.get("method") == "dense"), None)
    if dense is not None and _number(dense.get(x)) is not None and _number(dense.get(y)) is not None:
        fig.add_trace(go.Scatter(
            x=[_number(dense[x])], y=[_number(dense[y])], mode="markers+text", name="dense layer",
            marker={"symbol": "star", "size": 16, "color": METHOD_COLORS["dense"]}, text=["dense"],
            textposition="top center", hovertemplate="dense layer<br>" + x_label + ": %{x:.4g}<extra></extra>",
        ))
    if not fig.data:
        fig.add_annotation(text=f"no {y_label} or {x_label} in these results", showarrow=False,
                           xref="paper", yref="paper", x=0.5, y=0.5)
    fig.update_layout(
        title={"text": f"{y_label} vs {x_label}"}, height=400, margin={"l": 60, "r": 20, "t": 50, "b": 50},
        xaxis={"title": {"text": x_label}, "type": "log" if x_log else "linear"},
        yaxis={"title": {"text": y_label}, "rangemode": "tozero"},
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def point_label(row: Mapping[str, Any]) -> str:
    """A row's method and ranks in a few words: KCP R=2 K=4, CP rank 24, Tucker-2 12/16."""
    method = METHODS.get(row.get("method"))
    if method is None or method.name == "dense":
        return "dense layer"
    return f"{method.label} {method.describe(row)}"


def spectrum(singular_values: Sequence[float], energy: Sequence[float], rel_errors: Sequence[float],
             current: int | None = None) -> go.Figure:
    """The KT spectrum: singular values of the rearranged kernel, cumulative energy and KT-only error per R.

    ``rel_errors[R]`` is the error with R terms (``rel_errors[0] == 1``); ``energy[R-1]`` the share of
    ``‖W‖²`` in the first R terms.
    """
    n = len(singular_values)
    ranks = list(range(1, n + 1))
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.08, subplot_titles=(
        "singular values σ_R", "share of ‖W‖² in the first R terms", "KT-only error with R terms"))
    fig.add_trace(go.Scatter(x=ranks, y=list(singular_values), mode="lines+markers", marker={"size": 4},
                             name="σ_R", hovertemplate="R=%{x}: σ=%{y:.4g}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Scatter(x=ranks, y=list(energy), mode="lines", name="energy",
                             hovertemplate="R=%{x}: %{y:.2%}<extra></extra>"), row=1, col=2)
    fig.add_trace(go.Scatter(x=[0, *ranks], y=list(rel_errors), mode="lines", name="KT-only error",
                             hovertemplate="R=%{x}: %{y:.4f}<extra></extra>"), row=1, col=3)
    if current is not None and 1 <= current <= n:
        for col in (1, 2, 3):
            fig.add_vline(x=current, line={"color": METHOD_COLORS["kcp"], "dash": "dash"}, row=1, col=col)
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_yaxes(range=[0, 1.02], row=1, col=2)
    fig.update_yaxes(range=[0, 1.02], row=1, col=3)
    fig.update_xaxes(title_text="KT rank R")
    fig.update_layout(height=330, showlegend=False, margin={"l": 50, "r": 20, "t": 50, "b": 50})
    return fig


def history(errors: Sequence[float]) -> go.Figure:
    """Kernel error after the two-stage start (sweep 0) and after every refinement sweep."""
    fig = go.Figure(go.Scatter(x=list(range(len(errors))), y=list(errors), mode="lines+markers",
                               line={"color": METHOD_COLORS["kcp"]},
                               hovertemplate="sweep %{x}: %{y:.5f}<extra></extra>"))
    fig.update_layout(title={"text": "joint refinement: kernel error per sweep"}, height=280,
                      xaxis={"title": {"text": "sweep (0 = two-stage start)"}}, yaxis={"title": {"text": "error"}},
                      margin={"l": 60, "r": 20, "t": 50, "b": 50})
    return fig


def mosaic(kernel: np.ndarray, max_out: int = 8, max_in: int = 8) -> np.ndarray:
    """The first ``max_out`` x ``max_in`` filters of an (O, I, k_h, k_w) kernel tiled into one image, NaN between."""
    kernel = np.asarray(kernel, dtype=float)
    n_out, n_in = min(kernel.shape[0], max_out), min(kernel.shape[1], max_in)
    kh, kw = kernel.shape[2:]
    image = np.full((n_out * (kh + 1) - 1, n_in * (kw + 1) - 1), np.nan)
    for o in range(n_out):
        for i in range(n_in):
            image[o * (kh + 1):o * (kh + 1) + kh, i * (kw + 1):i * (kw + 1) + kw] = kernel[o, i]
    return image


def filters(original: np.ndarray, reconstructed: np.ndarray, title: str = "reconstructed",
            max_out: int = 8, max_in: int = 8) -> go.Figure:
    """Original and reconstructed filters side by side (rows: output channels, columns: input channels)."""
    panels = [("original", mosaic(original, max_out, max_in)), (title, mosaic(reconstructed, max_out, max_in))]
    panels.append(("difference", panels[1][1] - panels[0][1]))
    finite = np.abs(panels[0][1][np.isfinite(panels[0][1])])
    bound = float(finite.max()) if finite.size else 1.0
    fig = make_subplots(rows=1, cols=3, subplot_titles=[p[0] for p in panels], horizontal_spacing=0.04)
    for col, (_, image) in enumerate(panels, start=1):
        fig.add_trace(go.Heatmap(z=image.tolist(), colorscale="RdBu", reversescale=True, zmin=-bound, zmax=bound,
                                 showscale=col == 3, hovertemplate="%{z:.4f}<extra></extra>"), row=1, col=col)
        fig.update_yaxes(autorange="reversed", scaleanchor=f"x{col if col > 1 else ''}", showticklabels=False,
                         row=1, col=col)
        fig.update_xaxes(showticklabels=False, row=1, col=col)
    n_out, n_in = min(original.shape[0], max_out), min(original.shape[1], max_in)
    fig.update_layout(height=380, margin={"l": 20, "r": 20, "t": 60, "b": 20},
                      title={"text": f"first {n_out} output x {n_in} input channels (each tile one filter)"})
    return fig

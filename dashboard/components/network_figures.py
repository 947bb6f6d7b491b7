"""Figures of the Network page as pure functions: report dicts (``kcp.network.run``) in, ``go.Figure`` out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from dashboard.components.figures import METHOD_COLORS, METHOD_LABELS


def layer_label(layer: Mapping[str, Any]) -> str:
    ranks = ", ".join(f"{k.replace('_rank', '')}={v}" for k, v in layer["ranks"].items())
    return METHOD_LABELS[layer["method"]] + (f" ({ranks})" if ranks else "")


def layer_bars(layers: Sequence[Mapping[str, Any]], metric: str = "params") -> go.Figure:
    """Per-layer ``metric`` ('params' or 'macs') before (dense) and after, the bar coloured by the method."""
    names = [layer["name"] for layer in layers]
    fig = go.Figure([
        go.Bar(name="dense", x=names, y=[layer[f"dense_{metric}"] for layer in layers], marker_color="#cccccc"),
        go.Bar(name="plan", x=names, y=[layer[metric] for layer in layers],
               marker_color=[METHOD_COLORS[layer["method"]] for layer in layers],
               text=[layer_label(layer) for layer in layers], textposition="outside",
               hovertemplate="%{x}: %{y:,} " + metric + "<br>%{text}<extra></extra>"),
    ])
    fig.update_layout(barmode="group", yaxis_type="log", yaxis_title=metric, height=380,
                      margin=dict(l=10, r=10, t=30, b=10), legend=dict(orientation="h"))
    return fig


def accuracy_vs_compression(reports: Sequence[Mapping[str, Any]], metric: str = "accuracy") -> go.Figure:
    """Zero-shot and fine-tuned ``metric`` ('accuracy' or 'top1_agreement') against achieved compression."""
    rows = sorted(reports, key=lambda r: r["compression"])
    fig = go.Figure()
    for stage, dash in (("zero_shot", "dot"), ("finetuned", "solid")):
        ys = [r.get(f"{metric}_{stage}") for r in rows]
        if any(y is not None for y in ys):
            fig.add_scatter(x=[r["compression"] for r in rows], y=ys, mode="lines+markers",
                            name=stage.replace("_", "-"), line_dash=dash)
    dense = next((r.get(f"{metric}_dense") for r in rows if r.get(f"{metric}_dense") is not None), None)
    if dense is not None:
        fig.add_hline(y=dense, line_dash="dash", line_color="#111111", annotation_text="dense")
    fig.update_layout(xaxis_type="log", xaxis_title="conv-parameter compression (all convs)",
                      yaxis_title=metric.replace("_", " "), yaxis_range=[0, 1.02], height=360,
                      margin=dict(l=10, r=10, t=30, b=10))
    return fig


def curve(points: Sequence[Mapping[str, Any]]) -> go.Figure:
    """A fine-tuning curve: held-out accuracy and top-1 agreement against the step."""
    fig = go.Figure()
    for key in ("accuracy", "top1_agreement"):
        if any(p.get(key) is not None for p in points):
            fig.add_scatter(x=[p["step"] for p in points], y=[p.get(key) for p in points], mode="lines+markers",
                            name=key.replace("_", " "))
    fig.update_layout(xaxis_title="step", yaxis_range=[0, 1.02], height=320, margin=dict(l=10, r=10, t=30, b=10))
    return fig


def grid_heatmap(reports: Sequence[Mapping[str, Any]], key: str, title: str) -> go.Figure:
    """The uniform KT x CP grid: ``key`` of each point as a cell, its compression in the hover."""
    kts = sorted({r["kt_rank"] for r in reports})
    cps = sorted({r["cp_rank"] for r in reports})
    by = {(r["kt_rank"], r["cp_rank"]): r for r in reports}
    z = [[by.get((r, k), {}).get(key) for k in cps] for r in kts]
    text = [[("" if by.get((r, k), {}).get(key) is None else f"{by[(r, k)][key]:.3f}") for k in cps] for r in kts]
    hover = [[(f"{by[(r, k)]['compression']:.1f}x" if (r, k) in by else "") for k in cps] for r in kts]
    fig = go.Figure(go.Heatmap(z=z, x=[str(k) for k in cps], y=[str(r) for r in kts], text=text,
                               texttemplate="%{text}", customdata=hover, zmin=0, zmax=1, colorscale="Viridis",
                               hovertemplate="R=%{y} K=%{x}: %{z:.3f} at %{customdata}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="CP rank K", yaxis_title="KT rank R", height=360,
                      margin=dict(l=10, r=10, t=40, b=10))
    return fig

"""Explore: drag the KT and CP ranks and watch parameters, MACs, errors, top-1 and latency follow.

The live panel is a fragment that also draws the rank sliders (into their place in the sidebar): moving one
reruns only the panel. Every result is cached per layer, ranks and options, so a point visited before shows
at once, and a stale decomposition is abandoned as soon as the slider moves again.
"""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from dashboard.components import cards, diagram, figures, fmt, guards, resources, sidebar
from dashboard.components.layer import header, layer_target
from kcp.budget import largest_within
from kcp.fit import FITS
from kcp.latency import Timing
from kcp.target import LayerTarget

# Ends the live panel's caption; tests and the benchmark wait for it to know the whole view is drawn.
UPDATED = "View updated for"


def timings(sel: sidebar.Selection, key: resources.TargetKey, target: LayerTarget, point: resources.Point,
            stage_shapes: list[tuple[int, ...]]) -> tuple[Timing | None, Timing | None, str | None]:
    """Latency of the factorised layer and of the dense one, or why there is none."""
    settings = sel.latency
    if settings is None:
        return None, None, None
    need = guards.batch_bytes(stage_shapes, settings.batch, settings.dtype)
    try:
        guards.check_fits(f"Timing a batch of {settings.batch}", need, "Lower the batch in the latency settings.")
    except guards.RequestTooLarge as exc:
        st.warning(f"**Latency not measured**: {exc}", icon=":material/warning:")
        return None, None, "batch too large"
    dense = guards.attempt("Timing the dense layer", resources.dense_latency, key, settings, target, warn=True)
    mine = guards.attempt("Timing the factorised layer", resources.latency, key, point, settings, target, warn=True)
    return mine, dense, None if mine and dense else "could not be timed"


def comparison(sel: sidebar.Selection, key: resources.TargetKey, target: LayerTarget, kcp_row: dict,
               kcp_ranks: dict[str, int]) -> None:
    """The chosen baselines at the largest ranks within KCP's budget (parameters or MACs), one table."""
    budget = kcp_row[sel.match]
    rows = [(kcp_row, kcp_ranks)]
    shape = sel.factor_shape()
    with st.spinner("Decomposing the baselines at this budget…"):
        for method in sel.baselines:
            ranks = largest_within(method, target.kernel_shape, budget, kind=sel.match, factor_shape=shape,
                                   in_hw=target.in_hw, geometry=target.geometry)
            if ranks is None:
                st.caption(f"{figures.METHOD_LABELS[method]}: even rank 1 is over this budget.")
                continue
            row = guards.attempt(f"{figures.METHOD_LABELS[method]} at {fmt.ranks(ranks)}", resources.metrics, key,
                                 sel.point(method, ranks), sel.live_fidelity, target, warn=True)
            if row is not None:
                rows.append((row, ranks))
    table = pd.DataFrame([{
        "method": figures.METHOD_LABELS[r["method"]], "ranks": fmt.ranks(ranks), "params": r["params"],
        "MACs": r["macs"], "kernel error": r["rel_error"], "output error": r["output_rel_error"],
        "top-1 agreement": r["top1_agreement"],
    } for r, ranks in rows])
    st.dataframe(table, hide_index=True, width="stretch", column_config={
        "params": st.column_config.NumberColumn(format="localized"),
        "MACs": st.column_config.NumberColumn(format="localized"),
        "kernel error": st.column_config.NumberColumn(format="%.4f"),
        "output error": st.column_config.NumberColumn(format="%.4f"),
        "top-1 agreement": st.column_config.NumberColumn(format="percent"),
    })
    st.caption(f"Each baseline at its largest rank whose {'parameters' if sel.match == 'params' else 'MACs'} do "
               f"not exceed KCP's ({fmt.count(budget)}). On real kernels KCP does not necessarily win at equal "
               f"parameters: the table shows the trade-off as it is.")


def fit_contrast(sel: sidebar.Selection, key: resources.TargetKey, target: LayerTarget, point: resources.Point,
                 row: dict) -> None:
    """The current point fitted both ways, side by side: what each fit does to kernel and output error."""
    if target.calibration is None:
        return
    rows = []
    for fit in FITS:
        other = row if fit == point.fit else guards.attempt(
            f"Fitting to {sidebar.FIT_LABELS[fit]}", resources.metrics, key,
            sel.point(point.method, dict(point.ranks), fit), sel.live_fidelity, target, warn=True)
        if other is not None:
            rows.append({"fitted to": sidebar.FIT_LABELS[fit] + (" (shown above)" if fit == point.fit else ""),
                         "kernel error": other["rel_error"], "output error": other["output_rel_error"],
                         "top-1 agreement": other["top1_agreement"]})
    st.markdown("**Fitted to the kernel or to the outputs**, same ranks and parameters:")
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", key="fit_contrast", column_config={
        "kernel error": st.column_config.NumberColumn(format="%.4f"),
        "output error": st.column_config.NumberColumn(format="%.4f"),
        "top-1 agreement": st.column_config.NumberColumn(format="percent"),
    })
    st.caption(f"Output error and top-1 on {target.images}; the output fit learns from "
               f"{target.calibration_images}. A lower kernel error does not mean a better layer.")


@st.fragment
def live(sel: sidebar.Selection, key: resources.TargetKey, target: LayerTarget) -> None:
    """The rank sliders, a decomposition at their ranks and its cards: moving a slider reruns only this."""
    started = time.perf_counter()
    sel = sidebar.with_ranks(sel)
    if sel.ranks is None:
        st.warning(f"**KCP does not apply to {sel.layer.name}**: {sel.kcp_reason}. The KT and CP sliders are off; "
                   f"the baselines below still work. To force KCP, tick *Use this trivial split anyway* under "
                   f"*Factor shape and placement*.", icon=":material/info:")
        method, ranks = sel.baseline
        point = sel.point(method, ranks)
        st.subheader(f"{figures.METHOD_LABELS[method]} at {fmt.ranks(ranks)}")
    else:
        r, k = sel.ranks
        point = sel.point("kcp", {"kt_rank": r, "cp_rank": k})
        st.subheader(f"KCP at KT rank R = {r}, CP rank K = {k}")
    with st.spinner(f"Decomposing ({fmt.ranks(dict(point.ranks))})…"):
        result = guards.attempt("Decomposition", resources.decomposition, key, point, target)
        row = None if result is None else guards.attempt("Metrics", resources.metrics, key, point,
                                                         sel.live_fidelity, target)
    if result is None or row is None:
        return
    history = result.history if result.method == "kcp" else None
    stages = result.stages(target.in_hw, target.geometry, target.conv.bias is not None)
    shapes = [s.in_shape for s in stages] + [s.out_shape for s in stages]
    timing, dense, note = timings(sel, key, target, point, shapes)
    cards.show(row, history=history, timing=timing, dense_timing=dense, images=target.images, latency_note=note)
    caption = st.empty()
    fit_contrast(sel, key, target, point, row)
    st.plotly_chart(diagram.structure(stages, f"The factorised layer: {len(stages)} layers at "
                                              f"{fmt.ranks(result.ranks)}", figures.METHOD_COLORS[result.method]),
                    key="structure", config=figures.plot_config("structure"))
    left, right = st.columns([3, 2], vertical_alignment="center")
    compare = result.method == "kcp" and sel.baselines and left.toggle(
        "Compare with the baselines at the same budget", key="compare",
        help="Decomposes every chosen baseline at the largest rank within KCP's parameters (or MACs).")
    meta = {"model": sel.loaded.name, "layer": sel.layer.name, "method": result.method, **dict(point.ranks)}
    tag = "-".join(f"{k}{v}" for k, v in point.ranks)
    right.download_button(
        "Download the decomposed layer (.pt)", data=lambda: resources.layer_file(result, target, meta),
        file_name=f"{sel.loaded.name}-{sel.layer.name}-{result.method}-{tag}.pt".replace("/", "_"),
        mime="application/octet-stream", on_click="ignore", icon=":material/download:",
        help="Load it with kcp.export.load_layer(path): an nn.Module with this layer's stride, padding and bias.")
    if compare:
        comparison(sel, key, target, row, result.ranks)
    notes = [cards.device_caption(timing), _fitted(result.info, target)]
    decided = cards.spread(row)
    if decided:
        notes.append(f"Top-1: {decided}.")
    if "refine_skipped" in result.info:
        notes.append(f"Refinement skipped: {result.info['refine_skipped']}.")
    notes.append(f"{UPDATED} {fmt.ranks(result.ranks)} in {time.perf_counter() - started:.2f} s.")
    caption.caption(" ".join(n for n in notes if n))


def _fitted(info: dict, target: LayerTarget) -> str:
    if info.get("fit") == "outputs":
        return (f"Fitted to the layer's outputs on {target.calibration_images} "
                f"({fmt.count(info.get('calibration_patches'))} patches).")
    return "Fitted to the kernel."


def main() -> None:
    """The explore page: header, the layer, and the live panel."""
    sel = sidebar.render(sliders=False)
    if sel is None:
        st.stop()
    header(sel, "KCP Rank Explorer")
    found = layer_target(sel)
    if found is None:
        sidebar.with_ranks(sel)
        st.stop()
    key, target = found
    live(sel, key, target)
    st.caption("Open **Rank grid** for heatmaps over many ranks and Pareto plots against the baselines, and "
               "**Learn** for the maths, the KT spectrum, the four-layer structure and the filters.")


main()

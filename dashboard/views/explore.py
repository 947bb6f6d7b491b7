"""Explore: drag the KT and CP ranks and watch parameters, MACs, errors, top-1 and latency follow.

The live panel is a fragment that also draws the rank sliders (into their place in the sidebar): moving one
reruns only the panel. Every result is cached per layer, ranks and options, so a point visited before shows
at once; the work runs in worker processes, and a stale point is stopped as soon as the slider moves again.
Before a point runs, ``kcp.estimate`` predicts its time and memory: past the app's budget the panel asks
first, past its ceiling it refuses with the reason.
"""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from dashboard.components import cards, diagram, figures, fmt, guards, resources, sidebar, workers
from dashboard.components.layer import header, layer_target
from kcp import estimate as est
from kcp import zoo
from kcp.budget import largest_within
from kcp.decomposition import Decomposition
from kcp.fit import FITS
from kcp.latency import LatencySettings, PairedTiming
from kcp.methods import METHODS
from kcp.target import LayerTarget

# Ends the live panel's caption; tests and the benchmark wait for it to know the whole view is drawn.
UPDATED = "View updated for"
# Start the panel's warning when a point is refused or needs a confirmation (tests and the benchmark look for them).
REFUSED, CONFIRM = "Not computed", "This point is heavy"
CONFIRMED = "confirmed_points"


def estimate(sel: sidebar.Selection, target: LayerTarget, point: resources.Point,
             latency: LatencySettings | None = None) -> est.Estimate:
    """What ``point`` will cost (decomposition and evaluation, or the latency measurement when given)."""
    fidelity = sel.live_fidelity and target.fidelity is not None
    network = zoo.rest_macs(sel.loaded, sel.layer.name) if fidelity else 0
    shape = sel.factor_shape() if METHODS[point.method].kronecker else None
    prediction = est.estimate(point.method, target.kernel_shape, dict(point.ranks), target.in_hw,
                              geometry=target.geometry, factor_shape=shape, refine_sweeps=point.refine_sweeps,
                              images=0 if target.inputs is None else len(target.inputs), network_macs=network,
                              latency=latency, fit=point.fit)
    if latency is None:
        return prediction
    # Only the timing itself: the point's decomposition is done (or refused) by then.
    return est.Estimate(prediction.parts["latency"], prediction.peak_bytes, prediction.params,
                        prediction.dense_params, prediction.macs, prediction.dense_macs,
                        {"latency": prediction.parts["latency"]})


def _confirm(tag: tuple) -> None:
    st.session_state.setdefault(CONFIRMED, set()).add(tag)


def allowed(what: str, prediction: est.Estimate, tag: tuple, button: str) -> bool:
    """True when ``prediction`` is within the app's budget or was confirmed; else the refusal or the question."""
    decision = est.decide(prediction, est.APP_LIMITS, forced=tag in st.session_state.get(CONFIRMED, set()))
    if decision.action == "refuse":
        st.error(f"**{REFUSED}: {what}** {decision.reason}", icon=":material/block:")
        return False
    if decision.action == "confirm":
        st.warning(f"**{CONFIRM}: {what}** {decision.reason}. It runs in the background, and moving a slider "
                   f"stops it.", icon=":material/hourglass:")
        st.button(button, key=f"confirm::{hash(tag)}", on_click=_confirm, args=(tag,), icon=":material/play_arrow:")
        return False
    return True


def timings(sel: sidebar.Selection, key: resources.TargetKey, target: LayerTarget,
            point: resources.Point, result: Decomposition) -> tuple[PairedTiming | None, str | None]:
    """The dense layer and ``result`` (the decomposition at ``point``) timed together, or why there is no timing."""
    settings = sel.latency
    if settings is None:
        return None, None
    tag = ("latency", key, point, settings)
    if not allowed(f"timing a batch of {settings.batch}", estimate(sel, target, point, settings), tag,
                   "Time it anyway"):
        return None, "not measured (see above)"
    pair = guards.attempt("Timing", resources.latency, key, point, settings, target, result, warn=True)
    return pair, None if pair else "could not be timed"


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


def other_fits(sel: sidebar.Selection, point: resources.Point) -> list[resources.Point]:
    """``point`` fitted every other way (for the side-by-side table)."""
    return [sel.point(point.method, dict(point.ranks), fit) for fit in FITS if fit != point.fit]


def kt_floor(sel: sidebar.Selection, point: resources.Point) -> resources.Point | None:
    """For a KCP point: KT-only at its KT rank and factor shape, fitted to the outputs. Every KCP at that KT rank
    is such a KT whose factors are held to CP rank K, so none fits the calibration images better: the gap between
    the two is what the CP rank gives up."""
    if point.method != "kcp":
        return None
    return sel.point("kt", {"kt_rank": dict(point.ranks)["kt_rank"]}, "outputs")


def fit_contrast(place, sel: sidebar.Selection, key: resources.TargetKey, target: LayerTarget,
                 point: resources.Point, row: dict, light: bool) -> None:
    """The current point fitted both ways, side by side: what each fit does to kernel and output error. Drawn into
    ``place`` with the shown fit's row at once; the other fit's row follows from its own job (slot "contrast"),
    after the rest of the view is drawn, and a slider move stops it. Only for a ``light`` point (within the app's
    budget without a confirmation): a confirmed heavy point is not fitted a second time unasked."""
    if target.calibration is None:
        return
    rows = {point.fit: row}
    with place:
        st.markdown("**Fitted to the kernel or to the outputs**, same ranks and parameters:")
        table, note, floor_note = st.empty(), st.empty(), st.empty()

    def show() -> None:
        table.dataframe(pd.DataFrame([{
            "fitted to": sidebar.FIT_LABELS[fit] + (" (shown above)" if fit == point.fit else ""),
            "kernel error": rows[fit]["rel_error"], "output error": rows[fit]["output_rel_error"],
            "top-1 agreement": rows[fit]["top1_agreement"]} for fit in FITS if fit in rows]),
            hide_index=True, width="stretch", column_config={
                "kernel error": st.column_config.NumberColumn(format="%.4f"),
                "output error": st.column_config.NumberColumn(format="%.4f"),
                "top-1 agreement": st.column_config.NumberColumn(format="percent"),
            })

    show()
    if not light:
        note.caption("The other fit is not computed for a point this heavy; switch *Fit to* in the sidebar to see it.")
        return
    for other in other_fits(sel, point):
        note.caption(f"Fitting to {sidebar.FIT_LABELS[other.fit]} in a worker, once one is free…")
        with place:
            found = guards.attempt(f"Fitting to {sidebar.FIT_LABELS[other.fit]}", resources.metrics, key, other,
                                   sel.live_fidelity, target, "contrast", warn=True)
        if found is not None:
            rows[other.fit] = found
            show()
    note.caption(f"Output error and top-1 on {target.images}; the output fit learns from "
                 f"{target.calibration_images}. A lower kernel error does not mean a better layer.")
    floor_point = kt_floor(sel, point)
    if floor_point is None:
        return
    with place:  # only its output error is shown: no network top-1 for it
        floor = guards.attempt("Fitting KT-only to the outputs", resources.metrics, key, floor_point, False, target,
                               "contrast", warn=True)
    if floor is not None:
        r, k = (dict(point.ranks)[name] for name in ("kt_rank", "cp_rank"))
        floor_note.caption(
            f"**KT floor**: KT-only at R={r}, its factors free ({floor['params']:,} parameters; KCP "
            f"{row['params']:,}), fitted to the outputs: output error {fmt.error(floor['output_rel_error'])}. "
            f"Every KCP at KT rank {r} is such a KT with its factors held to CP rank {k}, so none fits the "
            f"calibration images better: the gap is what the CP rank gives up.")


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
    prediction = estimate(sel, target, point)
    for warning in prediction.warnings():
        st.caption(f":orange[:material/warning: This point has {warning}.]")
    if not allowed(fmt.ranks(dict(point.ranks)), prediction, ("point", key, point, sel.live_fidelity),
                   "Compute it anyway"):
        return
    # The other fit of an earlier point is no longer wanted: its worker is freed for this point.
    for other in other_fits(sel, point):
        workers.cancel("contrast", keep=(key, other, sel.live_fidelity))
    # A message, not a spinner: if the run is stopped from the toolbar, this is what stays on the page.
    waiting = st.empty()
    waiting.info(f"Computing {fmt.ranks(dict(point.ranks))} in a worker process ({prediction.describe()}). Moving a "
                 f"slider or Stop in the toolbar cancels it; rerun the page to start it again.",
                 icon=":material/hourglass_top:")
    found = guards.attempt("Decomposition", resources.evaluated, key, point, sel.live_fidelity, target,
                           "decomposition")
    waiting.empty()
    if found is None:
        return
    result, row = found
    history = result.history if result.method == "kcp" else None
    stages = result.stages(target.in_hw, target.geometry, target.conv.bias is not None)
    pair, note = timings(sel, key, target, point, result)
    cards.show(row, history=history, timing=pair.factorised if pair else None,
               dense_timing=pair.dense if pair else None, images=target.images, latency_note=note, pair=pair)
    caption = st.empty()
    contrast = st.container()
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
    notes = [cards.device_caption(pair.factorised if pair else None), _fitted(result.info, target)]
    decided = cards.spread(row)
    if decided:
        notes.append(f"Top-1: {decided}.")
    if "refine_skipped" in result.info:
        notes.append(f"Refinement skipped: {result.info['refine_skipped']}.")
    notes.append(f"{UPDATED} {fmt.ranks(result.ranks)} in {time.perf_counter() - started:.2f} s.")
    caption.caption(" ".join(n for n in notes if n))
    fit_contrast(contrast, sel, key, target, point, row, est.decide(prediction, est.APP_LIMITS).action == "run")


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

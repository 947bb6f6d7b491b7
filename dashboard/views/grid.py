"""Rank grid: KCP over a KT x CP grid against the baselines, computed on request, cached on disk, exported.

The sweep runs in a worker process (``resources.grid``); the Cancel button, or any other click, stops it (its
worker is killed). Every finished point is already in kcp's on-disk cache, so pressing Compute again continues
where it stopped.
"""

from __future__ import annotations

import hashlib
import time

import pandas as pd
import streamlit as st

from dashboard.components import figures, guards, resources, sidebar, workers
from dashboard.components.layer import open_page
from kcp import estimate as est
from kcp import zoo
from kcp.kron import max_cp_rank, max_kt_rank
from kcp.sweep import SweepConfig

DEFAULT_GRID = (1, 2, 4, 8)
MAX_POINTS = 100  # KCP points per request: past this a sweep takes far too long for an interactive page
JOB = "grid_job"
HEATMAPS = {"rel_error": "Kernel error", "output_rel_error": "Output error", "top1_agreement": "Top-1 agreement",
            "params": "Parameters", "macs": "MACs", "latency_ms": "Latency"}
PARETO_X = {"params": "vs parameters", "macs": "vs MACs", "latency_ms": "vs latency"}


def job_key(key: resources.TargetKey, config: SweepConfig) -> str:
    """Identifies a grid request (layer, ranks, methods and every option), to know whose results are shown."""
    return hashlib.sha256(repr((key, config)).encode()).hexdigest()[:16]


def _cancel() -> None:
    job = st.session_state.get(JOB)
    if job is not None and job["state"] == "running":
        job["state"] = "cancelled"
    workers.cancel("grid")


def run(target_key: resources.TargetKey, config: SweepConfig, key: str) -> None:
    """Compute the grid with a progress bar and a Cancel button; the rows land in this session's state."""
    job = {"key": key, "state": "running", "done": 0, "total": None, "rows": [], "config": {}, "seconds": 0.0}
    st.session_state[JOB] = job
    started = time.perf_counter()
    with st.status("Computing the rank grid…", expanded=True) as status:
        bar = st.progress(0.0, text="timing the dense layer")
        st.button("Cancel", key="grid_cancel", on_click=_cancel, icon=":material/stop_circle:",
                  help="Stops after the point being computed; finished points stay cached on disk.")

        def progress(update: tuple[int, int, dict]) -> None:
            done, total, row = update
            job.update(done=done, total=total)
            job["rows"].append(row)
            bar.progress(done / total, text=f"{done} of {total} points · {figures.point_label(row)} · "
                                            f"{time.perf_counter() - started:.1f} s")

        result = guards.attempt("Rank grid", resources.grid, target_key, config, progress)
        if result is None:
            job["state"] = "failed"
            status.update(label="The grid could not be computed", state="error")
            return
        job.update(state="cancelled" if result.cancelled else "done", rows=result.rows, config=result.config,
                   seconds=result.seconds)
        status.update(label=f"Grid done: {len(result.rows)} points in {result.seconds:.1f} s", state="complete",
                      expanded=False)


def _on_click(chart_key: str) -> None:
    picked = figures.ranks_from_selection(st.session_state.get(chart_key))
    if picked is not None:
        sidebar.set_ranks(*picked)


def heatmaps(rows: list[dict], config: SweepConfig, current: tuple[int, int] | None) -> None:
    """One tab per metric; clicking a cell moves the sliders to it."""
    present = [m for m in HEATMAPS if any(r.get(m) is not None for r in rows if r["method"] == "kcp")]
    if not present:
        return
    st.subheader("KT × CP heatmaps")
    st.caption(f"KCP at every grid point; the outlined cell is the sliders' point; {figures.CLICK_HINT}.")
    for tab, metric in zip(st.tabs([HEATMAPS[m] for m in present]), present):
        with tab:
            chart_key = f"heat::{metric}"
            fig = figures.heatmap(rows, metric, current, config.kt_ranks, config.cp_ranks)
            st.plotly_chart(fig, key=chart_key, on_select=lambda k=chart_key: _on_click(k),
                            selection_mode="points", config=figures.plot_config(f"heatmap-{metric}"))


def paretos(rows: list[dict]) -> None:
    """Error against parameters, MACs and latency for KCP and the baselines, the dense layer marked."""
    st.subheader("Pareto plots")
    errors = [m for m in ("rel_error", "output_rel_error") if any(r.get(m) is not None for r in rows)]
    y = st.radio("Error", errors, horizontal=True, key="pareto_y",
                 format_func=lambda m: figures.METRICS[m][0])
    xs = [x for x in PARETO_X if any(r.get(x) is not None for r in rows)]
    for tab, x in zip(st.tabs([PARETO_X[x] for x in xs]), xs):
        with tab:
            st.plotly_chart(figures.pareto(rows, x, y), key=f"pareto::{x}",
                            config=figures.plot_config(f"pareto-{y}-vs-{x}"))
    st.caption("Lines are each method's Pareto front (no other point of that method is both cheaper and more "
               "accurate). Baselines sit at their largest rank within each KCP point's budget.")


def export(job: dict) -> None:
    """The grid as CSV and JSON (kcp's own writer), and how to save the plots."""
    st.subheader("Export")
    cols = st.columns(3)
    for col, suffix, mime in ((cols[0], ".csv", "text/csv"), (cols[1], ".json", "application/json")):
        col.download_button(f"Grid as {suffix[1:].upper()}", data=resources.sweep_file(
            job["rows"], job["config"], job["state"] != "done", job["seconds"], suffix),
            file_name=f"kcp-grid{suffix}", mime=mime, on_click="ignore", icon=":material/download:",
            key=f"export{suffix}")
    cols[2].caption("Any plot: the camera icon in its toolbar saves a PNG (made in the browser, works offline).")
    with st.expander("All rows"):
        st.dataframe(pd.DataFrame(job["rows"]), hide_index=True)


def main() -> None:
    """The grid page: grid controls, the sweep on request, heatmaps, Pareto plots, export."""
    sel, key, target = open_page("Rank grid")
    current = sel.ranks
    if current is None:
        st.info("The grid sweeps KCP's KT and CP ranks, so it needs a layer KCP applies to (see the sidebar).")
        st.stop()
    shape = sel.factor_shape()
    top_r, top_k = max_kt_rank(shape), max_cp_rank(shape)
    c1, c2 = st.columns(2)
    kt_options, cp_options = sidebar.rank_ladder(top_r, current[0]), sidebar.rank_ladder(top_k, current[1])
    # A rung is marked when, with the sliders' other rank, it makes a point larger or costlier than dense.
    kt_ranks = c1.multiselect("KT ranks R", kt_options,
                              format_func=lambda r: f"{r}{sidebar.over_dense(sel, r, current[1])}",
                              **sidebar.keep(f"grid_kt::{top_r}", [r for r in DEFAULT_GRID if r <= top_r],
                                             lambda v: set(v) <= set(kt_options)))
    cp_ranks = c2.multiselect("CP ranks K", cp_options,
                              format_func=lambda k: f"{k}{sidebar.over_dense(sel, current[0], k)}",
                              **sidebar.keep(f"grid_cp::{top_k}", [k for k in DEFAULT_GRID if k <= top_k],
                                             lambda v: set(v) <= set(cp_options)))
    c3, c4, c5 = st.columns(3)
    with_latency = c3.toggle("Measure latency", disabled=sel.latency is None,
                             help="Uses the sidebar's latency settings for every point.",
                             **sidebar.keep("grid_latency", sel.latency is not None))
    fidelity = c4.toggle("Network top-1", disabled=target.fidelity is None,
                         **sidebar.keep("grid_fidelity", sel.live_fidelity))
    points = len(kt_ranks) * len(cp_ranks)
    c5.metric("KCP points", points, help=f"plus the dense layer and {len(sel.baselines)} baselines at each budget")
    if not kt_ranks or not cp_ranks:
        st.info("Pick at least one KT rank and one CP rank.")
        st.stop()
    latency = sel.latency if with_latency else None
    config = SweepConfig(kt_ranks=tuple(sorted(kt_ranks)), cp_ranks=tuple(sorted(cp_ranks)), methods=sel.methods,
                         factors=sel.factors, placement=sel.placement, refine_sweeps=sel.refine_sweeps,
                         match=sel.match, fidelity=fidelity, latency=latency, fit=sel.fit)
    images = 0 if target.inputs is None else len(target.inputs)
    network = zoo.rest_macs(sel.loaded, sel.layer.name) if fidelity else 0
    prediction = est.grid(target.kernel_shape, config.kt_ranks, config.cp_ranks, target.in_hw,
                          baselines=len(sel.baselines), latency=latency, geometry=target.geometry, factor_shape=shape,
                          refine_sweeps=sel.refine_sweeps, images=images, network_macs=network, fit=sel.fit)
    decision = est.decide(prediction, est.GRID_LIMITS, forced=st.session_state.get("grid_confirm", False))
    key_now = job_key(key, config)
    job = st.session_state.get(JOB)
    if job is not None and job["state"] == "running":
        job["state"] = "interrupted"  # a run that never finished: another click stopped it
        workers.cancel("grid")
    if decision.action == "refuse":
        st.error(f"**Not computed**: {decision.reason}", icon=":material/block:")
    elif decision.action == "confirm" or st.session_state.get("grid_confirm"):
        st.checkbox(f"Yes, compute it: {decision.reason}", key="grid_confirm")
    else:
        st.caption(f"Estimated {prediction.describe()} on this machine.")
    if st.button("Compute grid", type="primary", icon=":material/play_arrow:",
                 disabled=points > MAX_POINTS or decision.action != "run",
                 key="grid_compute",
                 help="Finished points are cached on disk: a repeat is instant and a stopped grid resumes."):
        run(key, config, key_now)
        job = st.session_state.get(JOB)
    if points > MAX_POINTS:
        st.error(f"**Request too large**: {points} KCP points (plus baselines) is over the {MAX_POINTS} this page "
                 f"computes at once. Pick fewer ranks.", icon=":material/block:")
    if job is None or job["key"] != key_now:
        st.info("Not computed yet for these settings: press **Compute grid**.", icon=":material/grid_on:")
        st.stop()
    if job["state"] in ("cancelled", "interrupted"):
        why = "Cancelled" if job["state"] == "cancelled" else "Stopped by another click"
        st.warning(f"**{why}: {job['done']} of {job['total'] or '?'} points kept.** They are cached on disk; press "
                   f"**Compute grid** to finish the rest.", icon=":material/stop_circle:")
    elif job["state"] == "failed":
        st.stop()
    if not job["rows"]:
        st.stop()
    st.caption(f"Every method fitted to **{sidebar.FIT_LABELS[sel.fit]}** (sidebar: *Fit to*)"
               + (f", learned from {target.calibration_images}" if sel.fit == "outputs" else "")
               + (f"; output error and top-1 on {target.images}." if target.images else "."))
    heatmaps(job["rows"], config, current)
    paretos(job["rows"])
    export(job)


main()

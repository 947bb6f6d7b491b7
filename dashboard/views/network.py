"""Network: compress every conv of the model under one budget, fine-tune it, run the uniform KT x CP grid.

Plans come from per-layer sweeps cached on disk (the first plan of a model takes a while; later budgets are
instant); fine-tuning and the grid run in this session's script with a live progress bar, and any click (the
Cancel button included) stops them. Finished grid points stay cached.
"""

from __future__ import annotations

import json
import time

import pandas as pd
import streamlit as st

from dashboard.components import fmt, guards, network_jobs, sidebar
from dashboard.components import network_figures as nf
from dashboard.components.figures import METHOD_LABELS, plot_config
from kcp.network.plan import GRID

STATE = "network_page"
COMPRESSIONS = (2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80)
MAC_FRACTIONS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.75, 0.9)


def _state() -> dict:
    return st.session_state.setdefault(STATE, {"run": None, "tuned": None, "reports": [], "grid": None,
                                               "job": None, "onnx": None})


def _cancel() -> None:
    _state()["job"] = "cancelled"


def _should_stop() -> bool:
    return st.session_state.get(STATE, {}).get("job") != "running"


def _controls(loaded) -> tuple[str, float, tuple[str, ...], int, float, bool]:
    c1, c2, c3 = st.columns([1, 2, 2])
    kind = c1.radio("Budget", ("compression", "macs"), horizontal=True,
                    format_func=lambda k: {"compression": "parameters", "macs": "MACs"}[k],
                    **sidebar.keep("net_kind", "compression"))
    if kind == "compression":
        value = c2.select_slider("Conv-parameter compression (all convs)", COMPRESSIONS,
                                 format_func=lambda v: f"{v}x", **sidebar.keep("net_compression", 30,
                                                                               lambda v: v in COMPRESSIONS))
    else:
        value = c2.select_slider("Conv MACs, fraction of dense", MAC_FRACTIONS, format_func=fmt.percent,
                                 **sidebar.keep("net_macs", 0.25, lambda v: v in MAC_FRACTIONS))
    methods = tuple(c3.multiselect("Methods a layer may take", sidebar.METHODS,
                                   format_func=lambda m: METHOD_LABELS[m],
                                   **sidebar.keep("net_methods", list(sidebar.METHODS),
                                                  lambda v: set(v) <= set(sidebar.METHODS)))) or ("kcp",)
    c4, c5, c6 = st.columns(3)
    steps = int(c4.number_input("Fine-tuning steps", 10, 3000, step=50,
                                **sidebar.keep("net_steps", 300, lambda v: 10 <= v <= 3000)))
    lr = float(c5.select_slider("Learning rate", (3e-4, 1e-3, 3e-3, 1e-2), format_func=lambda v: f"{v:g}",
                                **sidebar.keep("net_lr", 3e-3)))
    distill = c6.toggle("Distil from the dense network (no labels)",
                        help="Train on the dense network's logits instead of labels (the only choice for models "
                             "without labelled images here).", **sidebar.keep("net_distill", False))
    return kind, float(value), methods, steps, lr, distill


def _make_plan(session, kind: str, value: float) -> None:
    state = _state()
    state["job"] = "running"
    with st.status("Planning the network…", expanded=True) as status:
        bar = st.progress(0.0, text="per-layer sweeps (cached on disk after the first time)")
        st.button("Cancel", key="net_plan_cancel", on_click=_cancel, icon=":material/stop_circle:")

        def progress(done: int, total: int, name: str) -> None:
            bar.progress(done / max(total, 1), text=f"layer {done} of {total} {name}")

        run = guards.attempt("Network plan", network_jobs.plan_and_apply, session, kind, value, progress,
                             _should_stop)
        state["job"] = None
        if run is None:
            status.update(label="No plan", state="error")
            return
        state.update(run=run, tuned=None, onnx=None)
        state["reports"].append(run.report)
        status.update(label=f"Plan at {run.plan.compression:.1f}x", state="complete", expanded=False)


def _finetune(session) -> None:
    state = _state()
    state["job"] = "running"
    points: list[dict] = []
    with st.status("Fine-tuning…", expanded=True) as status:
        bar = st.progress(0.0)
        chart = st.empty()
        st.button("Cancel", key="net_ft_cancel", on_click=_cancel, icon=":material/stop_circle:")
        started = time.perf_counter()

        def progress(step: int, total: int, point: dict | None) -> None:
            bar.progress(step / total, text=f"step {step} of {total} · {time.perf_counter() - started:.1f} s")
            if point is not None:
                points.append(point)
                chart.plotly_chart(nf.curve(points), key=f"net_live_{step}")

        run = guards.attempt("Fine-tuning", network_jobs.finetune, session, state["run"].plan, progress,
                             _should_stop)
        state["job"] = None
        if run is None:
            status.update(label="Fine-tuning failed", state="error")
            return
        state.update(tuned=run, onnx=None)
        state["reports"].append(run.report)
        done = "cancelled" if run.finetune.cancelled else "done"
        status.update(label=f"Fine-tuning {done}: {run.finetune.steps} steps in {run.finetune.seconds:.1f} s",
                      state="complete", expanded=False)


def _cards(report: dict) -> None:
    cols = st.columns(5)
    cols[0].metric("Compression", f"{report['compression']:.1f}x", f"{fmt.count(report['params'])} conv params",
                   delta_color="off")
    cols[1].metric("MACs", fmt.si(report["macs"]), f"{report['macs'] / report['dense_macs']:.0%} of dense",
                   delta_color="off")
    key = "accuracy" if report["accuracy_dense"] is not None else "top1_agreement"
    label = "Accuracy" if key == "accuracy" else "Top-1 agreement"
    dense = report["accuracy_dense"] if key == "accuracy" else 1.0
    cols[2].metric(f"{label}, zero-shot", fmt.percent(report[f"{key}_zero_shot"]),
                   f"dense {fmt.percent(dense)}", delta_color="off")
    tuned = report.get(f"{key}_finetuned")
    cols[3].metric(f"{label}, fine-tuned", "—" if tuned is None else fmt.percent(tuned))
    cols[4].metric("Latency", fmt.ms(report["latency_ms"]), f"dense {fmt.ms(report['dense_latency_ms'])}",
                   delta_color="off")


def _layers(report: dict) -> None:
    table = pd.DataFrame([{"layer": layer["name"], "method": nf.layer_label(layer), "params": layer["params"],
                           "dense params": layer["dense_params"], "MACs": layer["macs"],
                           "dense MACs": layer["dense_macs"], "output error": layer["output_rel_error"],
                           "note": layer["note"]} for layer in report["layers"]])
    st.dataframe(table, hide_index=True, use_container_width=True)
    for tab, metric in zip(st.tabs(["Parameters", "MACs"]), ("params", "macs")):
        with tab:
            st.plotly_chart(nf.layer_bars(report["layers"], metric), key=f"net_bars_{metric}",
                            config=plot_config(f"network-{metric}"))


def _grid(session) -> None:
    st.subheader("Uniform KT × CP grid")
    st.caption("One (KT rank, CP rank) at every eligible conv (clamped to a layer's largest meaningful ranks), "
               "fine-tuned with the steps above; the paper's analysis of expressive capacity.")
    c1, c2, c3 = st.columns([2, 2, 1])
    kts = c1.multiselect("KT ranks", (1, 2, 4, 8, 16), **sidebar.keep("net_grid_kt", list(GRID)))
    cps = c2.multiselect("CP ranks", (1, 2, 4, 8, 16), **sidebar.keep("net_grid_cp", list(GRID)))
    state = _state()
    if c3.button("Run grid", icon=":material/grid_on:", disabled=not kts or not cps):
        state["job"] = "running"
        with st.status("Running the uniform grid…", expanded=True) as status:
            bar = st.progress(0.0)
            st.button("Cancel", key="net_grid_cancel", on_click=_cancel, icon=":material/stop_circle:")

            def progress(done: int, total: int, report: dict) -> None:
                bar.progress(done / total, text=f"{done} of {total} points · R={report['kt_rank']} "
                                                f"K={report['cp_rank']}")

            out = guards.attempt("Uniform grid", network_jobs.grid, session, sorted(kts), sorted(cps), progress,
                                 _should_stop)
            state["job"] = None
            if out is not None:
                state["grid"] = out[0]
                status.update(label=f"{len(out[0])} points" + (" (cancelled)" if out[1] else ""),
                              state="complete", expanded=False)
    if state["grid"]:
        key = "accuracy" if state["grid"][0]["accuracy_dense"] is not None else "top1_agreement"
        cols = st.columns(2)
        for col, stage in zip(cols, ("zero_shot", "finetuned")):
            col.plotly_chart(nf.grid_heatmap(state["grid"], f"{key}_{stage}", f"{key} {stage.replace('_', '-')}"),
                             key=f"net_grid_{stage}", config=plot_config(f"grid-{stage}"))


def _downloads(loaded, run, data_x) -> None:
    st.subheader("Downloads")
    cols = st.columns(3)
    cols[0].download_button("Plan and report (JSON)", json.dumps(run.report, indent=1, default=str),
                            file_name="network-plan.json", mime="application/json", on_click="ignore",
                            icon=":material/download:")
    cols[1].download_button("Network (.pt state)", network_jobs.network_file(run, loaded), file_name="network.pt",
                            on_click="ignore", icon=":material/download:",
                            help="kcp.export.load_network(path) rebuilds it")
    state = _state()
    if state["onnx"] is None:
        if cols[2].button("Export ONNX", icon=":material/output:"):
            with st.spinner("Exporting and checking in onnxruntime…"):
                state["onnx"] = guards.attempt("ONNX export", network_jobs.onnx_file, run, loaded, data_x)
            st.rerun()
    else:
        data, check = state["onnx"]
        cols[2].download_button("Network (ONNX)", data, file_name="network.onnx", on_click="ignore",
                                icon=":material/download:")
        cols[2].caption(f"onnxruntime vs PyTorch: max |Δ| {check['max_abs_diff']:.2e}; "
                        f"{fmt.ms(check['ort_latency_ms'])} vs {fmt.ms(check['torch_latency_ms'])}")


sel = sidebar.render(sliders=False)
if sel is not None:
    loaded = sel.loaded
    st.title("Whole network")
    st.caption("Every conv gets a method and ranks (or stays dense) so that the network meets one budget with the "
               f"least summed output error, every candidate fitted to **{sidebar.FIT_LABELS[sel.fit]}** (sidebar: "
               "*Fit to*); then fine-tuning recovers the accuracy.")
    kind, value, methods, steps, lr, distill = _controls(loaded)
    session = guards.attempt("Network data", network_jobs.session, loaded, methods, sel.fit, steps, lr, distill)
    if session is not None:
        state = _state()
        if st.button("Make plan", type="primary", icon=":material/account_tree:"):
            _make_plan(session, kind, value)
        run = state["run"]
        if run is not None and run.report["model"] == loaded.name:
            shown = state["tuned"] or run
            _cards(shown.report)
            _layers(shown.report)
            if st.button("Fine-tune", icon=":material/model_training:"):
                _finetune(session)
                shown = state["tuned"] or run
            if state["tuned"] is not None:
                st.plotly_chart(nf.curve(state["tuned"].finetune.curve), key="net_curve",
                                config=plot_config("finetune-curve"))
            reports = [r for r in state["reports"] if r["model"] == loaded.name]
            metric = "accuracy" if run.report["accuracy_dense"] is not None else "top1_agreement"
            st.plotly_chart(nf.accuracy_vs_compression(reports, metric), key="net_acc",
                            config=plot_config("accuracy-vs-compression"))
            _downloads(loaded, shown, session.data.eval_x)
        _grid(session)

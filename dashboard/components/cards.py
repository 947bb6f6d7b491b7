"""The metric cards of one decomposition: parameters, MACs, kernel and output error, top-1, latency vs dense."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import streamlit as st

from dashboard.components import fmt
from kcp.latency import Timing
from kcp.schema import BY_NAME

# Every card: framed, as tall as its row's tallest, and deltas in words (no arrows).
CARD = {"border": True, "height": "stretch", "delta_arrow": "off"}


def _versus(better: bool, text: str) -> tuple[str, str]:
    # st.metric colours a delta by its sign; these deltas are words, so the colour says better or worse.
    return text, "normal" if better else "inverse"


def _card(column, key: str, value: str, delta: str | None, colour: str, help: str, **extra: Any) -> None:
    column.metric(BY_NAME[key].title, value, delta, delta_color=colour, help=help, **CARD, **extra)


def show(row: Mapping[str, Any], *, history: list[float] | None = None, timing: Timing | None = None,
         dense_timing: Timing | None = None, n_images: int | None = None,
         latency_note: str | None = None) -> None:
    """Six cards in two rows, from an ``evaluate`` row and the measured timings."""
    first, second = st.columns(3), st.columns(3)
    params, dense_params = row["params"], row["dense_params"]
    delta, colour = _versus(params < dense_params, f"{fmt.ratio(row['compression'])} smaller than dense "
                            f"({fmt.count(dense_params)})" if params < dense_params else
                            f"{fmt.ratio(params / dense_params)} the dense {fmt.count(dense_params)}")
    _card(first[0], "params", fmt.count(params), delta, colour,
          "Weights of the factorised layer (no bias); compression = dense / factorised.")
    macs, dense_macs = row["macs"], row["dense_macs"]
    delta, colour = _versus(macs < dense_macs, f"{fmt.ratio(dense_macs / macs)} fewer than dense "
                            f"({fmt.si(dense_macs)})" if macs < dense_macs else
                            f"{fmt.ratio(macs / dense_macs)} the dense {fmt.si(dense_macs)}")
    _card(first[1], "macs", fmt.si(macs), delta, colour,
          f"Multiply-accumulates for one image ({fmt.count(macs)}); FLOPs = 2 × MACs.")
    start = f"two-stage {fmt.error(history[0])}, {len(history) - 1} refinement sweeps" if history else None
    _card(first[2], "rel_error", fmt.error(row["rel_error"]), start, "off",
          "‖W − Ŵ‖_F / ‖W‖_F: 0 is exact, 1 is no better than all zeros. The line: error after each sweep.",
          chart_data=history if history and len(history) > 1 else None)
    out = row.get("output_rel_error")
    images = f"on {n_images} real images" if n_images else "on the layer's real input activations"
    _card(second[0], "output_rel_error", fmt.error(out), images if out is not None else "no activations", "off",
          "‖y − ŷ‖_F / ‖y‖_F of the layer's outputs on real activations captured in the network.")
    top1, acc, dense_accuracy = row.get("top1_agreement"), row.get("accuracy"), row.get("dense_accuracy")
    note = "network not run (see the sidebar)" if top1 is None else "network with this layer replaced"
    if acc is not None:
        note = f"accuracy {fmt.percent(acc)}" + ("" if dense_accuracy is None else
                                                 f" (dense {fmt.percent(dense_accuracy)})")
    _card(second[1], "top1_agreement", fmt.percent(top1), note, "off",
          "Share of real images where the network with this layer replaced predicts the same class as the original.")
    if timing is None or dense_timing is None:
        _card(second[2], "latency_ms", "n/a", latency_note or "latency off (sidebar)", "off",
              "Measured latency of the factorised layer against the dense one.")
        return
    faster = timing.median_ms < dense_timing.median_ms
    speed = dense_timing.median_ms / timing.median_ms
    delta = (f"{fmt.ratio(speed)} faster than dense ({fmt.ms(dense_timing.median_ms)})" if faster else
             f"{fmt.ratio(1 / speed)} slower than dense ({fmt.ms(dense_timing.median_ms)})")
    _card(second[2], "latency_ms", fmt.ms(timing.median_ms), delta, "normal" if faster else "inverse",
          f"Median of {timing.runs} runs on {timing.device_name}, {timing.dtype}, batch {timing.batch} "
          f"(p10 {fmt.ms(timing.p10_ms)}, p90 {fmt.ms(timing.p90_ms)}).")


def device_caption(timing: Timing | None) -> str:
    """Where and how latency was measured, to print under the cards."""
    if timing is None:
        return ""
    return (f"Latency measured on **{timing.device_name}**, {timing.dtype}, batch {timing.batch}, median of "
            f"{timing.runs} runs, torch {timing.torch_version}.")

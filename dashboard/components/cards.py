"""The metric cards of one decomposition: parameters, MACs, kernel and output error, top-1, latency vs dense."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import streamlit as st

from dashboard.components import fmt
from kcp.latency import PairedTiming, Timing
from kcp.metrics import proportion_interval
from kcp.schema import BY_NAME

# Every card: framed, as tall as its row's tallest, and deltas in words (no arrows).
CARD = {"border": True, "height": "stretch", "delta_arrow": "off"}


def _versus(better: bool, text: str) -> tuple[str, str]:
    # st.metric colours a delta by its sign; these deltas are words, so the colour says better or worse.
    return text, "normal" if better else "inverse"


def _card(column, key: str, value: str, delta: str | None, colour: str, help: str, **extra: Any) -> None:
    column.metric(BY_NAME[key].title, value, delta, delta_color=colour, help=help, **CARD, **extra)


def spread(row: Mapping[str, Any]) -> str | None:
    """How many evaluation images decide the top-1 agreement, and its 95 % interval (None without a network)."""
    n, changed = row.get("eval_images"), row.get("top1_changed")
    if n is None or changed is None:
        return None
    low, high = proportion_interval(n - changed, n)
    return f"{changed} of {n} images changed class · 95 % CI {fmt.percent(low)}–{fmt.percent(high)}"


def show(row: Mapping[str, Any], *, history: list[float] | None = None, timing: Timing | None = None,
         dense_timing: Timing | None = None, images: str | None = None,
         latency_note: str | None = None, pair: PairedTiming | None = None) -> None:
    """Six cards in two rows, from an ``evaluate`` row and the measured timings; ``images`` says in words what
    the evaluation images are, ``pair`` is the paired measurement the timings come from (its verdict is shown)."""
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
    n = row.get("eval_images")
    where = f"on {n} evaluation images" if n else "on the layer's real input activations"
    _card(second[0], "output_rel_error", fmt.error(out), where if out is not None else "no activations", "off",
          "‖y − ŷ‖_F / ‖y‖_F of the layer's outputs on real activations captured in the network, "
          f"{images or 'evaluation images'}. An output fit never sees these images.")
    top1, acc, dense_accuracy = row.get("top1_agreement"), row.get("accuracy"), row.get("dense_accuracy")
    changed, n = row.get("top1_changed"), row.get("eval_images")
    note = "network not run (see the sidebar)" if top1 is None else (
        f"{changed} of {n} images changed class" if changed is not None else "network with this layer replaced")
    if acc is not None:
        note = f"accuracy {fmt.percent(acc)}" + ("" if dense_accuracy is None else
                                                 f" (dense {fmt.percent(dense_accuracy)})")
    decided = spread(row)
    _card(second[1], "top1_agreement", fmt.percent(top1), note, "off",
          "Share of evaluation images where the network with this layer replaced predicts the same class as the "
          f"original ({images or 'evaluation images'})." + (f" {decided}: few images decide this figure." if
                                                             decided else ""))
    if timing is None or dense_timing is None:
        _card(second[2], "latency_ms", "n/a", latency_note or "latency off (sidebar)", "off",
              "Measured latency of the factorised layer against the dense one.")
        return
    timing_spread = (f"p10 {fmt.ms(timing.p10_ms)}, p90 {fmt.ms(timing.p90_ms)}; "
                     f"dense {fmt.ms(dense_timing.median_ms)} "
                     f"(p10 {fmt.ms(dense_timing.p10_ms)}, p90 {fmt.ms(dense_timing.p90_ms)})")
    if pair is None:
        delta, colour = f"dense {fmt.ms(dense_timing.median_ms)}", "off"
    else:
        head, ci = pair.summary().split(" (", 1)
        delta = f"{head} · dense {fmt.ms(dense_timing.median_ms)} · {ci.split(',')[0]}"
        colour = {"faster": "normal", "slower": "inverse"}.get(pair.verdict, "off")
        timing_spread += f"; speed-up {pair.speedup:.2f}x, {ci.rstrip(')')}"
    _card(second[2], "latency_ms", fmt.ms(timing.median_ms), delta, colour,
          f"Median of {timing.runs} runs on {timing.device_name}, {timing.dtype}, batch {timing.batch}, timed in "
          f"alternation with the dense layer ({timing_spread}).")


def device_caption(timing: Timing | None) -> str:
    """Where and how latency was measured, to print under the cards."""
    if timing is None:
        return ""
    return (f"Latency measured on **{timing.device_name}**, {timing.dtype}, batch {timing.batch}, median of "
            f"{timing.runs} runs, torch {timing.torch_version}.")

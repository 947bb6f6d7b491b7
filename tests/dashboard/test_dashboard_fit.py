"""The "Fit to" control in AppTest: Explore, the rank grid and Learn show kcp's own figures for either fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from dashboard.components import fmt
from dashboard.components.sidebar import FIT_LABELS, widget_key
from kcp.cache import ResultCache
from kcp.decomposition import decompose
from kcp.evaluate import evaluate
from kcp.metrics import proportion_interval
from kcp.sweep import SweepConfig, sweep
from kcp.target import LayerTarget

FIT = widget_key("fit")


def no_errors(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def library_row(target: LayerTarget, fit: str, fidelity: bool = True) -> dict:
    result = decompose(target.conv.weight.detach(), "kcp", kt_rank=2, cp_rank=4, factors=(8, 8, 8, 8),
                       **target.fit_options(fit))
    return evaluate(target, result, fidelity=fidelity)


def table_with(at: AppTest, column: str):
    return next(d.value for d in at.dataframe if column in d.value.columns)


@pytest.mark.slow
def test_explore_fitted_to_outputs_shows_both_fits_side_by_side(app: AppTest, conv4: LayerTarget) -> None:
    assert app.radio(key=FIT).value == "kernel"
    app.radio(key=FIT).set_value("outputs").run()
    no_errors(app)
    outputs, kernel = library_row(conv4, "outputs"), library_row(conv4, "kernel")
    shown = {m.label: m.value for m in app.metric}
    assert shown["Kernel error"] == fmt.error(outputs["rel_error"])
    assert shown["Output error"] == fmt.error(outputs["output_rel_error"])
    assert shown["Top-1 agreement"] == fmt.percent(outputs["top1_agreement"])
    table = table_with(app, "fitted to")
    assert list(table["fitted to"]) == [FIT_LABELS["kernel"], FIT_LABELS["outputs"] + " (shown above)"]
    for i, row in enumerate((kernel, outputs)):
        assert table["kernel error"].iloc[i] == pytest.approx(row["rel_error"], abs=1e-12)
        assert table["output error"].iloc[i] == pytest.approx(row["output_rel_error"], abs=1e-12)
    # Which images decide each figure, in words.
    captions = " ".join(c.value for c in app.caption)
    assert conv4.images in captions and conv4.calibration_images in captions
    low, high = proportion_interval(450 - outputs["top1_changed"], 450)
    assert f"{outputs['top1_changed']} of 450 images changed class" in captions
    assert f"{fmt.percent(low)}–{fmt.percent(high)}" in captions
    # The KT floor: KT-only at the same KT rank and factor shape, fitted to the outputs, as the library gives it.
    kt = decompose(conv4.conv.weight.detach(), "kt", kt_rank=2, factors=(8, 8, 8, 8), **conv4.fit_options("outputs"))
    floor = evaluate(conv4, kt)
    assert (f"KT-only at R=2, its factors free ({floor['params']:,} parameters; KCP {outputs['params']:,}), "
            f"fitted to the outputs: output error {fmt.error(floor['output_rel_error'])}") in captions


@pytest.mark.slow
def test_grid_follows_the_fit(app: AppTest, conv4: LayerTarget, cache_dir: Path) -> None:
    app.radio(key=FIT).set_value("outputs").run()
    app.switch_page("views/grid.py").run()
    kt_box, cp_box = (m for m in app.multiselect if m.key.startswith(("_grid_kt::", "_grid_cp::")))
    kt_box.set_value([2])
    cp_box.set_value([2, 4])
    app.toggle(key=widget_key("grid_latency")).set_value(False)
    app.toggle(key=widget_key("grid_fidelity")).set_value(False)
    app.button(key="grid_compute").click().run()
    no_errors(app)
    rows = app.session_state["grid_job"]["rows"]
    assert {r["fit"] for r in rows} == {"outputs"}
    config = SweepConfig(kt_ranks=(2,), cp_ranks=(2, 4), factors=(8, 8, 8, 8), fidelity=False, fit="outputs")
    library = sweep(conv4, config, cache=ResultCache(cache_dir))
    assert [r["output_rel_error"] for r in rows] == [r["output_rel_error"] for r in library.rows]
    heat = next(json.loads(c.proto.spec) for c in app.get("plotly_chart")
                if json.loads(c.proto.spec)["data"][0]["type"] == "heatmap")
    by_point = {r["cp_rank"]: r for r in library.rows if r["method"] == "kcp"}
    assert heat["data"][0]["z"] == [[by_point[k]["rel_error"] for k in (2, 4)]]
    assert any("outputs on real images" in c.value for c in app.caption)


@pytest.mark.slow
def test_learn_contrasts_the_two_fits(app: AppTest, conv4: LayerTarget) -> None:
    app.switch_page("views/learn.py").run()
    no_errors(app)
    assert any(h.value == "5 · Why kernel error is not the point" for h in app.header)
    table = table_with(app, "fitted to")
    for i, fit in enumerate(("kernel", "outputs")):
        row = library_row(conv4, fit, fidelity=False)
        assert table["kernel error"].iloc[i] == pytest.approx(row["rel_error"], abs=1e-12)
        assert table["output error"].iloc[i] == pytest.approx(row["output_rel_error"], abs=1e-12)
    titles = [json.loads(c.proto.spec)["layout"]["annotations"][1]["text"] for c in app.get("plotly_chart")
              if len(json.loads(c.proto.spec)["data"]) == 3]
    assert titles[-2:] == [f"fitted to {FIT_LABELS['kernel']}", f"fitted to {FIT_LABELS['outputs']}"]

"""The dashboard's flows in Streamlit's AppTest, with every shown value checked against kcp's own results."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

import kcp
from dashboard.components import fmt, sidebar
from dashboard.components.figures import METHOD_LABELS
from dashboard.components.resources import layer_file
from dashboard.components.sidebar import widget_key
from kcp import estimate, zoo
from kcp.budget import largest_within
from kcp.cache import ResultCache
from kcp.evaluate import evaluate
from kcp.export import load_layer
from kcp.methods import rank_family
from kcp.modules import to_module
from kcp.sweep import SweepConfig, sweep
from kcp.target import LayerTarget

KT, CP = widget_key("kt_rank"), widget_key("cp_rank")
W = widget_key


def cards(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def layer_key(at: AppTest) -> str:
    return next(s.key for s in at.selectbox if s.key.startswith("_layer::"))


def no_errors(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def expected(target: LayerTarget, kt_rank: int, cp_rank: int, factors=(8, 8, 8, 8)) -> dict:
    """The library's row for a KCP point, computed outside the app."""
    result = kcp.kcp(target.conv.weight.detach(), kt_rank, cp_rank, factors=factors)
    return evaluate(target, result, latency=None)


def assert_cards_match(at: AppTest, row: dict) -> None:
    shown = cards(at)
    assert shown["Parameters"] == fmt.count(row["params"])
    assert shown["MACs per image"] == fmt.si(row["macs"])
    assert shown["Kernel error"] == fmt.error(row["rel_error"])
    assert shown["Output error"] == fmt.error(row["output_rel_error"])
    assert shown["Top-1 agreement"] == fmt.percent(row["top1_agreement"])


def test_opens_on_the_offline_default(app: AppTest, conv4: LayerTarget) -> None:
    no_errors(app)
    assert app.selectbox(key=W("model")).value == zoo.DEFAULT_MODEL
    assert app.selectbox(key=layer_key(app)).value == "conv4"
    assert (app.slider(key=KT).value, app.slider(key=CP).value) == (2, 4)
    shape = kcp.make_factor_shape((64, 64, 3, 3))
    assert app.slider(key=KT).max == kcp.max_kt_rank(shape)
    assert app.slider(key=CP).max == kcp.max_cp_rank(shape)
    assert_cards_match(app, expected(conv4, 2, 4))
    latency = cards(app)["Latency"]
    assert latency.endswith(("ms", "µs"))
    assert any("Latency measured on" in c.value and "CPU" in c.value for c in app.caption)
    assert [b.label for b in app.download_button] == ["Download the decomposed layer (.pt)"]


def test_moving_the_sliders_decomposes_again(app: AppTest, conv4: LayerTarget) -> None:
    before = cards(app)
    app.slider(key=KT).set_value(3).run()
    no_errors(app)
    assert_cards_match(app, expected(conv4, 3, 4))
    app.slider(key=CP).set_value(6).run()
    no_errors(app)
    assert_cards_match(app, expected(conv4, 3, 6))
    assert cards(app)["Parameters"] != before["Parameters"]


@pytest.mark.slow  # a second layer's target and fits (~4 s); the slider flow stays in the fast lane
def test_changing_layer_recomputes(app: AppTest, digits: zoo.LoadedModel) -> None:
    app.selectbox(key=layer_key(app)).set_value("conv2").run()
    no_errors(app)
    shape = kcp.make_factor_shape((32, 32, 3, 3))
    assert app.slider(key=KT).max == kcp.max_kt_rank(shape)
    assert any("layer **conv2**" in c.value for c in app.caption)
    assert_cards_match(app, expected(LayerTarget.from_zoo(digits, "conv2"), 2, 4, factors=shape.channels))


@pytest.mark.slow
def test_factor_shape_and_refinement_change_the_result_and_clamp_the_sliders(app: AppTest,
                                                                              conv4: LayerTarget) -> None:
    app.toggle(key=W("refine")).set_value(False).run()
    app.slider(key=KT).set_value(20).run()
    for side in ("C_out = O_A×O_B", "C_in = I_A×I_B"):
        app.selectbox(key=W(f"split::{side}::64")).set_value((2, 32)).run()
    no_errors(app)
    top = kcp.max_kt_rank(kcp.make_factor_shape((64, 64, 3, 3), (2, 32, 2, 32)))
    assert top < 20
    assert (app.slider(key=KT).max, app.slider(key=KT).value) == (top, top)
    result = kcp.kcp(conv4.conv.weight.detach(), top, 4, factors=(2, 32, 2, 32), refine_sweeps=0)
    assert_cards_match(app, evaluate(conv4, result))
    assert "0 refinement sweeps" in next(m for m in app.metric if m.label == "Kernel error").delta


def test_layer_without_kcp_is_explained_and_baselines_still_work(app: AppTest, digits: zoo.LoadedModel) -> None:
    app.selectbox(key=layer_key(app)).set_value("conv1").run()
    assert not app.exception
    info = next(i for i in zoo.conv_layers(digits) if i.name == "conv1")
    assert not info.kcp_ok
    assert any(info.kcp_reason in w.value for w in app.warning)
    assert all(s.disabled for s in app.slider if s.key in ("_kt_disabled", "_cp_disabled"))
    assert KT not in [s.key for s in app.slider]
    # The baseline panel: CP at the slider's rank, as the library computes it.
    method = app.selectbox(key=W("baseline_method")).value
    rank_slider = next(s for s in app.slider if s.key.startswith("_baseline_rank::"))
    top, ranks_of = rank_family(method, info.weight_shape, None)
    assert rank_slider.max == top
    target = LayerTarget.from_zoo(digits, "conv1")
    row = evaluate(target, kcp.decompose(target.conv.weight.detach(), method, **ranks_of(rank_slider.value)))
    assert cards(app)["Parameters"] == fmt.count(row["params"])
    assert cards(app)["Kernel error"] == fmt.error(row["rel_error"])


def test_trivial_split_can_be_forced(app: AppTest) -> None:
    app.selectbox(key=layer_key(app)).set_value("conv1").run()
    box = next(c for c in app.checkbox if c.key.startswith("_trivial::"))
    box.check().run()
    no_errors(app)
    assert KT in [s.key for s in app.slider]
    shape = kcp.make_factor_shape((32, 1, 3, 3), (4, 8, 1, 1))
    assert app.slider(key=KT).max == kcp.max_kt_rank(shape)


@pytest.mark.slow
def test_grid_computes_caches_and_matches_the_library(app: AppTest, conv4: LayerTarget, cache_dir: Path) -> None:
    app.switch_page("views/grid.py").run()
    no_errors(app)
    kt_box, cp_box = (m for m in app.multiselect if m.key.startswith(("_grid_kt::", "_grid_cp::")))
    kt_box.set_value([1, 2])
    cp_box.set_value([2, 4])
    app.toggle(key=W("grid_latency")).set_value(False)
    app.button(key="grid_compute").click().run()
    no_errors(app)
    job = app.session_state["grid_job"]
    assert job["state"] == "done"
    charts = [json.loads(c.proto.spec) for c in app.get("plotly_chart")]
    heat = next(c for c in charts if c["data"][0]["type"] == "heatmap")
    # The library's own sweep of the same grid, served from the cache the app filled.
    config = SweepConfig(kt_ranks=(1, 2), cp_ranks=(2, 4), factors=(8, 8, 8, 8), latency=None)
    library = sweep(conv4, config, cache=ResultCache(cache_dir))
    by_point = {(r["kt_rank"], r["cp_rank"]): r for r in library.rows if r["method"] == "kcp"}
    assert heat["data"][0]["z"] == [[by_point[(r, k)]["rel_error"] for k in (2, 4)] for r in (1, 2)]
    assert [r["rel_error"] for r in job["rows"]] == [r["rel_error"] for r in library.rows]
    # The sliders' point (R=2, K=4) is outlined; clicking cells carries [R, K].
    marker = next(t for t in heat["data"] if t.get("name") == "sliders")
    assert set(marker["x"]) == {"4"} and set(marker["y"]) == {"2"}
    cells = next(t for t in heat["data"] if t.get("name") == "cells")
    assert [c for i, c in enumerate(cells["customdata"]) if c not in cells["customdata"][:i]] == \
        [[1, 2], [1, 4], [2, 2], [2, 4]]
    assert [d.label for d in app.download_button] == ["Grid as CSV", "Grid as JSON"]

    # Back from another page: the result is still shown without computing again.
    app.switch_page("views/explore.py").run()
    app.switch_page("views/grid.py").run()
    assert app.session_state["grid_job"]["state"] == "done"
    assert any(json.loads(c.proto.spec)["data"][0]["type"] == "heatmap" for c in app.get("plotly_chart"))


@pytest.mark.slow  # a grid run (~3 s); the library's cancel-and-resume stays in the fast lane
def test_grid_cancel_keeps_finished_points(app: AppTest) -> None:
    app.switch_page("views/grid.py").run()
    kt_box, cp_box = (m for m in app.multiselect if m.key.startswith(("_grid_kt::", "_grid_cp::")))
    kt_box.set_value([1])
    cp_box.set_value([1, 2])
    app.toggle(key=W("grid_latency")).set_value(False)
    app.button(key="grid_compute").click().run()
    job = app.session_state["grid_job"]
    total = job["total"]
    # As if Cancel had been clicked while the third point was running.
    job.update(state="running", done=2, rows=job["rows"][:2])
    app.button(key="grid_cancel").click().run()
    no_errors(app)
    assert any(f"Cancelled: 2 of {total} points kept" in w.value for w in app.warning)
    # Any other click during a run stops it too, and says so.
    app.session_state["grid_job"]["state"] = "running"
    app.run()
    assert any(f"Stopped by another click: 2 of {total} points kept" in w.value for w in app.warning)


def test_grid_refuses_too_many_points(app: AppTest) -> None:
    app.switch_page("views/grid.py").run()
    kt_box, cp_box = (m for m in app.multiselect if m.key.startswith(("_grid_kt::", "_grid_cp::")))
    kt_box.set_value(kt_box.options)
    cp_box.set_value(cp_box.options)
    assert len(kt_box.options) * len(cp_box.options) > 100
    app.run()
    assert not app.exception
    assert app.button(key="grid_compute").disabled
    assert any("Request too large" in e.value for e in app.error)


def test_learn_page_shows_the_library_numbers(app: AppTest, conv4: LayerTarget) -> None:
    app.switch_page("views/learn.py").run()
    no_errors(app)
    result = kcp.kcp(conv4.conv.weight.detach(), 2, 4, factors=(8, 8, 8, 8))
    assert any(f"{result.params():,}".replace(",", "{,}") in latex.value for latex in app.latex)
    specs = [json.loads(c.proto.spec) for c in app.get("plotly_chart")]
    spectrum = kcp.kt_spectrum(conv4.conv.weight.detach(), factors=(8, 8, 8, 8))
    assert specs[0]["data"][0]["y"] == pytest.approx(spectrum.singular_values.tolist())
    stages = result.stages(conv4.in_hw, conv4.geometry)
    table = app.dataframe[0].value
    assert list(table["parameters"]) == [s.params for s in stages]
    assert list(table["MACs"]) == [s.macs for s in stages]
    app.radio(key="structure_of").set_value("cp").run()
    no_errors(app)


def test_baselines_at_the_same_budget(app: AppTest, conv4: LayerTarget) -> None:
    app.toggle(key="compare").set_value(True).run()
    no_errors(app)
    table = next(d.value for d in app.dataframe if "method" in d.value.columns)
    result = kcp.kcp(conv4.conv.weight.detach(), 2, 4, factors=(8, 8, 8, 8))
    budget = result.params()
    fitting = {}
    for method in ("kt", "cp", "tucker2", "svd"):
        ranks = largest_within(method, conv4.kernel_shape, budget, kind="params", factor_shape=result.factor_shape,
                               in_hw=conv4.in_hw, geometry=conv4.geometry)
        if ranks is not None:
            fitting[method] = ranks
        else:
            assert any(f"{METHOD_LABELS[method]}: even rank 1 is over this budget" in c.value for c in app.caption)
    assert list(table["method"]) == ["KCP", *(METHOD_LABELS[m] for m in fitting)]
    assert table["params"].iloc[0] == budget and (table["params"] <= budget).all()
    for i, (method, ranks) in enumerate(fitting.items(), start=1):
        row = evaluate(conv4, kcp.decompose(conv4.conv.weight.detach(), method, **ranks), latency=None)
        assert table["ranks"].iloc[i] == fmt.ranks(ranks)
        assert table["kernel error"].iloc[i] == pytest.approx(row["rel_error"])
        assert table["output error"].iloc[i] == pytest.approx(row["output_rel_error"])


def test_bad_upload_is_refused_with_the_reason(app: AppTest) -> None:
    app.selectbox(key=W("model")).set_value(sidebar.UPLOAD).run()
    assert not app.exception
    assert any("Upload a checkpoint" in i.value for i in app.info)
    app.file_uploader[0].set_value(("bad.pt", b"this is not a checkpoint", "application/octet-stream")).run()
    assert not app.exception
    assert any("bad.pt is not a PyTorch checkpoint" in e.value for e in app.error)


def test_upload_of_bare_kernels(app: AppTest, tmp_path: Path) -> None:
    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save({"features.weight": torch.randn(16, 8, 3, 3)}, buffer)
    app.selectbox(key=W("model")).set_value(sidebar.UPLOAD).run()
    app.file_uploader[0].set_value(("kernels.pt", buffer.getvalue(), "application/octet-stream")).run()
    no_errors(app)
    assert app.selectbox(key=layer_key(app)).value == "features"
    shown = cards(app)
    assert shown["Output error"] == "n/a"
    weight = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)["features.weight"]
    assert shown["Kernel error"] == fmt.error(kcp.kcp(weight, 2, 4, factors=(4, 4, 2, 4)).rel_error)


@pytest.mark.slow
def test_grouped_conv_is_explained_without_a_traceback(app: AppTest) -> None:
    from torchvision import models as tvm

    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save(tvm.mobilenet_v2().state_dict(), buffer)  # detected as the zoo's MobileNetV2 from its keys
    app.selectbox(key=W("model")).set_value(sidebar.UPLOAD).run()
    app.file_uploader[0].set_value(("mobilenet.pt", buffer.getvalue(), "application/octet-stream")).run()
    no_errors(app)
    app.selectbox(key=layer_key(app)).set_value("features.1.conv.0.0").run()  # depthwise 3x3, groups=32
    assert not app.exception and not app.metric
    assert any("No method here applies to features.1.conv.0.0" in w.value and "groups=32" in w.value
               for w in app.warning)
    assert all(s.disabled for s in app.slider)


def test_missing_offline_weights_show_what_to_do(app: AppTest, empty_torch_home: Path) -> None:
    app.selectbox(key=W("model")).set_value("resnet18").run()
    assert not app.exception
    text = " ".join(e.value for e in app.error)
    assert "resnet18-f37072fd.pth" in text and str(empty_torch_home / "hub" / "checkpoints") in text
    assert "no network in this test" in text
    app.selectbox(key=W("model")).set_value(zoo.DEFAULT_MODEL).run()
    no_errors(app)


def test_activations_too_large_for_memory_are_refused(app: AppTest, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KCP_DASHBOARD_MAX_BYTES", str(2**20))
    app.run()
    assert not app.exception
    assert any("Request too large" in e.value and "fewer real images" in e.value for e in app.error)


# The explore page's refusal and question (dashboard/views/explore.py: REFUSED, CONFIRM).
REFUSED, CONFIRM = "Not computed", "This point is heavy"


def test_latency_batch_too_large_is_refused_with_its_estimate(app: AppTest) -> None:
    app.number_input(key=W("lat_batch")).set_value(1 << 16).run()
    assert not app.exception
    refusal = next(e.value for e in app.error if REFUSED in e.value)
    assert "timing a batch of 65536" in refusal and "Lower the ranks, the images or the batch" in refusal
    assert cards(app)["Latency"] == "n/a"
    assert cards(app)["Kernel error"] != "n/a"


def test_max_ranks_ask_first_and_run_only_when_confirmed(app: AppTest, monkeypatch: pytest.MonkeyPatch) -> None:
    # The calibrated estimate of digits conv4 at R=192 K=24 is a few seconds, within the app's budget: a budget
    # below it makes the app ask.
    monkeypatch.setattr(estimate, "APP_LIMITS", estimate.Limits(0.5, 2**40, 900.0, 2**40))
    app.slider(key=KT).set_value(app.slider(key=KT).max).run()
    app.slider(key=CP).set_value(app.slider(key=CP).max).run()
    assert not app.exception
    question = next(m.value for m in app.warning if CONFIRM in m.value)
    assert "R=192" in question and "K=24" in question and "about" in question
    assert any("the dense layer's parameters" in c.value for c in app.caption)
    assert not app.metric  # nothing ran: no cards
    assert [b.label for b in app.button if (b.key or "").startswith("confirm::")] == ["Compute it anyway"]
    # Past the hard ceiling (here: a tiny one) even a confirmation does not run it.
    monkeypatch.setattr(estimate, "APP_LIMITS", estimate.Limits(0.1, 2**20, 0.2, 2**30))
    app.run()
    assert any(REFUSED in e.value for e in app.error)
    assert not [b for b in app.button if (b.key or "").startswith("confirm::")]


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_latency_in_other_dtypes_is_measured_or_explained(app: AppTest, dtype: str) -> None:
    app.selectbox(key=W("lat_dtype")).set_value(dtype).run()
    assert not app.exception
    measured = cards(app)["Latency"] != "n/a"
    assert measured or any("could not" in w.value or "cannot" in w.value for w in app.warning)
    if measured:
        assert any(f"{dtype}, batch 1" in c.value for c in app.caption)


@pytest.mark.slow
def test_sessions_keep_their_own_state(conv4: LayerTarget) -> None:
    one = AppTest.from_file(str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py"), default_timeout=180)
    two = AppTest.from_file(str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py"), default_timeout=180)
    one.run()
    two.run()
    one.slider(key=KT).set_value(5).run()
    two.run()
    assert one.slider(key=KT).value == 5 and two.slider(key=KT).value == 2
    assert_cards_match(two, expected(conv4, 2, 4))
    assert_cards_match(one, expected(conv4, 5, 4))


def test_downloaded_layer_rebuilds_the_module(conv4: LayerTarget, tmp_path: Path) -> None:
    result = kcp.kcp(conv4.conv.weight.detach(), 2, 4, factors=(8, 8, 8, 8))
    path = tmp_path / "layer.pt"
    path.write_bytes(layer_file(result, conv4, {"model": "digits-cnn", "layer": "conv4"}))
    module, meta = load_layer(path)
    expected_module = to_module(result, geometry=conv4.geometry, bias=conv4.conv.bias)
    x = conv4.inputs[:4]
    assert torch.allclose(module(x), expected_module(x))
    assert meta == {"model": "digits-cnn", "layer": "conv4"}

"""The Network page in AppTest: a plan under a budget, shown as the library computes it."""

from __future__ import annotations

import pytest

from dashboard.components.sidebar import widget_key
from kcp.network.data import network_data
from kcp.network.plan import Budget, PlanConfig, Planner


@pytest.mark.slow
def test_network_page_plans_under_the_budget_with_the_sidebar_s_fit(app, digits):
    """Fitted to the outputs (the sidebar's *Fit to*), the plan is the library's output-fitted one: on digits at 8x
    it differs from the kernel-fitted plan (conv4 takes KT instead of SVD)."""
    app.switch_page("views/network.py").run()
    assert not app.exception, [e.value for e in app.exception]
    app.radio(key=widget_key("fit")).set_value("outputs").run()
    app.multiselect(key=widget_key("net_methods")).set_value(["kt", "svd"]).run()
    app.select_slider(key=widget_key("net_compression")).set_value(8).run()
    next(b for b in app.button if b.label == "Make plan").click().run()
    assert not app.exception, [e.value for e in app.exception]
    assert not app.error, [e.value for e in app.error]
    data = network_data(digits)
    expected, kernel = (Planner(digits, data, PlanConfig(methods=("kt", "svd"), fit=fit)).plan(Budget("compression", 8))
                        for fit in ("outputs", "kernel"))
    assert [layer.method for layer in expected.layers] != [layer.method for layer in kernel.layers]
    cards = {m.label: m.value for m in app.metric}
    assert cards["Compression"] == f"{expected.compression:.1f}x" and expected.compression >= 8
    table = app.dataframe[0].value
    assert list(table["layer"]) == [layer.name for layer in expected.layers]
    assert list(table["params"]) == [layer.params for layer in expected.layers]
    assert any(b.label == "Fine-tune" for b in app.button)

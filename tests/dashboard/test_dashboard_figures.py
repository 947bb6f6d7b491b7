"""Unit tests of the dashboard's pure parts: figure builders, the structure diagram, formatting, guards."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

import kcp
from dashboard.components import diagram, figures, fmt, guards, sidebar
from kcp import zoo


def row(method: str, **values) -> dict:
    base = {"method": method, "kt_rank": None, "cp_rank": None, "rank": None, "in_rank": None, "out_rank": None,
            "params": 100, "macs": 1000, "rel_error": 0.5, "output_rel_error": 0.4, "latency_ms": 0.1}
    return {**base, **values}


def _kernel() -> torch.Tensor:
    return torch.randn(8, 8, 3, 3, generator=torch.Generator().manual_seed(0))


GRID = [row("kcp", kt_rank=r, cp_rank=k, rel_error=1 / (r * k), params=10 * r * k, macs=100 * r * k)
        for r in (1, 2) for k in (1, 2, 4)]


def test_heatmap_lays_out_kt_rows_and_cp_columns() -> None:
    fig = figures.heatmap(GRID, "rel_error", current=(2, 4))
    heat, cells, marker = fig.data
    assert isinstance(heat, go.Heatmap)
    assert list(heat.x) == ["1", "2", "4"] and list(heat.y) == ["1", "2"]
    assert [list(r) for r in heat.z] == [[1.0, 0.5, 0.25], [0.5, 0.25, 0.125]]
    assert _cells(cells) == [[1, 1], [1, 2], [1, 4], [2, 1], [2, 2], [2, 4]]
    assert set(marker.x) == {"4"} and set(marker.y) == {"2"}
    assert fig.layout.xaxis.title.text == "CP rank K" and fig.layout.yaxis.title.text == "KT rank R"


def _cells(trace) -> list[list[int]]:
    """The distinct [R, K] of the click targets, in order."""
    seen: list[list[int]] = []
    for c in map(list, trace.customdata):
        if c not in seen:
            seen.append(c)
    return seen


@pytest.mark.parametrize(("kt", "cp"), [((1, 2), (1, 2, 4)), ((1, 2, 3, 4), (1, 2, 4, 8)), (tuple(range(1, 21)),) * 2])
def test_every_part_of_every_cell_is_a_click_target(kt, cp) -> None:
    rows = [row("kcp", kt_rank=r, cp_rank=k, rel_error=0.5) for r in kt for k in cp]
    cells = figures.heatmap(rows, "rel_error").data[1]
    # Cells are [i - 1/2, i + 1/2] on the overlay axes; at the widest plot a cell spans PLOT_PX / n pixels.
    px_x, px_y = figures.PLOT_PX[0] / len(cp), figures.PLOT_PX[1] / len(kt)
    for j, r in enumerate(kt):
        for i, k in enumerate(cp):
            xs = sorted({x for x, c in zip(cells.x, cells.customdata) if list(c) == [r, k]})
            ys = sorted({y for y, c in zip(cells.y, cells.customdata) if list(c) == [r, k]})
            assert i - 0.5 < xs[0] and xs[-1] < i + 0.5 and j - 0.5 < ys[0] and ys[-1] < j + 0.5
            # Markers (size TILE_PX + 4) centred at most TILE_PX apart, and within TILE_PX / 2 of each edge.
            gaps = [(b - a) * px_x for a, b in zip([i - 0.5, *xs], [*xs, i + 0.5])]
            assert max(gaps[1:-1], default=0) <= figures.TILE_PX + 1e-9
            assert max(gaps[0], gaps[-1]) <= figures.TILE_PX / 2 + 1e-9
            gaps = [(b - a) * px_y for a, b in zip([j - 0.5, *ys], [*ys, j + 0.5])]
            assert max(gaps[1:-1], default=0) <= figures.TILE_PX + 1e-9
            assert max(gaps[0], gaps[-1]) <= figures.TILE_PX / 2 + 1e-9


def test_heatmap_leaves_holes_for_missing_points_and_hides_an_off_grid_marker() -> None:
    partial = GRID[:4]  # a cancelled sweep
    fig = figures.heatmap(partial, "rel_error", current=(3, 3), kt_ranks=[1, 2], cp_ranks=[1, 2, 4])
    assert [list(r) for r in fig.data[0].z] == [[1.0, 0.5, 0.25], [0.5, None, None]]
    assert "not computed" in list(fig.data[1].text)
    assert len(fig.data) == 2  # (3, 3) is not on the grid: no marker


def test_heatmap_of_costs_uses_a_log_colour_scale_with_real_tick_labels() -> None:
    fig = figures.heatmap(GRID, "params")
    assert fig.data[0].z[0][0] == pytest.approx(math.log10(10))
    assert fig.data[0].colorbar.ticktext[0] == fmt.si(10.0)
    assert fig.data[0].text[1][2] == fmt.si(80)


@pytest.mark.parametrize(("selection", "expected"), [
    ({"selection": {"points": [{"customdata": [2, 8], "x": "8", "y": "2"}]}}, (2, 8)),
    ({"selection": {"points": [{"x": "4", "y": "3"}]}}, (3, 4)),
    ({"selection": {"points": []}}, None),
    (None, None),
])
def test_a_clicked_cell_gives_its_ranks(selection, expected) -> None:
    assert figures.ranks_from_selection(selection) == expected


def test_pareto_front_keeps_only_undominated_points() -> None:
    points = [(1, 0.9), (2, 0.95), (3, 0.5), (4, 0.6), (5, 0.1)]
    assert figures.pareto_front(points) == [(1, 0.9), (3, 0.5), (5, 0.1)]


def test_pareto_plot_has_one_series_and_front_per_method_and_the_dense_star() -> None:
    rows = [*GRID, row("cp", rank=3, params=40, rel_error=0.3), row("svd", rank=2, params=60, rel_error=0.6),
            row("dense", params=1000, rel_error=0.0, macs=10_000)]
    fig = figures.pareto(rows, "params")
    names = [t.name for t in fig.data if t.showlegend is not False]
    assert names == ["KCP", "CP", "SVD", "dense layer"]
    dense = fig.data[-1]
    assert list(dense.x) == [1000] and list(dense.y) == [0.0] and dense.marker.symbol == "star"
    assert fig.layout.xaxis.type == "log"


def test_pareto_without_data_says_so() -> None:
    fig = figures.pareto([row("kcp", kt_rank=1, cp_rank=1, latency_ms=None)], "latency_ms")
    assert not fig.data
    assert "no" in fig.layout.annotations[0].text


def test_spectrum_marks_the_current_rank_in_all_three_panels() -> None:
    spectrum = kcp.kt_spectrum(_kernel())
    fig = figures.spectrum(spectrum.singular_values.tolist(), spectrum.energy.tolist(),
                           spectrum.rel_errors.tolist(), current=2)
    assert len(fig.data) == 3
    assert list(fig.data[2].x)[0] == 0 and list(fig.data[2].y)[0] == pytest.approx(1.0)
    assert len(fig.layout.shapes) == 3



def test_mosaic_tiles_filters_with_gaps() -> None:
    kernel = np.arange(2 * 3 * 2 * 2, dtype=float).reshape(2, 3, 2, 2)
    image = figures.mosaic(kernel)
    assert image.shape == (2 * 3 - 1, 3 * 3 - 1)
    np.testing.assert_array_equal(image[3:5, 6:8], kernel[1, 2])
    assert np.isnan(image[2]).all() and np.isnan(image[:, 2]).all()
    assert figures.mosaic(np.zeros((20, 20, 3, 3)), max_out=4, max_in=5).shape == (15, 19)


def test_filters_shows_original_reconstruction_and_difference() -> None:
    original = np.ones((4, 4, 3, 3))
    fig = figures.filters(original, 0.5 * original)
    assert [a.text for a in fig.layout.annotations] == ["original", "reconstructed", "difference"]
    assert np.nanmax(np.array(fig.data[2].z, dtype=float)) == pytest.approx(-0.5)


def test_structure_diagram_draws_every_tensor_and_layer_with_its_costs() -> None:
    result = kcp.kcp(_kernel(), 2, 2)
    stages = result.stages((8, 8))
    fig = diagram.structure(stages, "KCP")
    assert len(fig.layout.shapes) == len(stages) + 1
    assert len(fig.layout.annotations) == len(stages)  # one arrow per layer
    texts = " ".join(t for trace in fig.data for t in trace.text)
    for stage in stages:
        assert stage.name in texts and f"{fmt.count(stage.params)} params" in texts
        assert fmt.shape(stage.out_shape) in texts


def test_plot_config_saves_png_in_the_browser() -> None:
    assert figures.plot_config("x")["toImageButtonOptions"] == {"format": "png", "filename": "x", "scale": 2}


def test_formatting() -> None:
    assert fmt.count(36864) == "36,864"
    assert fmt.si(2_359_296) == "2.36 M" and fmt.si(999) == "999"
    assert fmt.error(0.96886) == "0.9689" and fmt.error(None) == "n/a"
    assert fmt.percent(0.5) == "50.0 %"
    assert fmt.ratio(121.26) == "121×" and fmt.ratio(1.5) == "1.5×"
    assert fmt.ms(0.4) == "400 µs" and fmt.ms(12.34) == "12.3 ms"
    assert fmt.ranks({"kt_rank": 2, "cp_rank": 4}) == "R=2 K=4" and fmt.ranks({"in_rank": 3, "out_rank": 5}) == "3/5"


def test_memory_estimates_and_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    assert guards.activation_bytes(450, 64, (8, 8)) == 450 * 64 * 8 * 8 * 4
    monkeypatch.setenv(guards.LIMIT_ENV, "1000")
    assert guards.memory_limit() == 1000
    with pytest.raises(guards.RequestTooLarge, match="Lower it"):
        guards.check_fits("this", 2000, "Lower it.")
    guards.check_fits("this", 999, "")


def test_errors_a_user_causes_get_messages_and_bugs_do_not() -> None:
    assert "Pretrained weights missing" in guards.explain(zoo.WeightsUnavailable("no file"))
    assert "Not enough memory" in guards.explain(RuntimeError("CUDA out of memory"))
    assert guards.explain(ValueError("bad rank")) == "bad rank"
    assert guards.explain(KeyError("bug")) is None


def test_sidebar_helpers() -> None:
    assert sidebar.divisor_pairs(12) == [(1, 12), (2, 6), (3, 4), (4, 3), (6, 2), (12, 1)]
    infos = zoo.conv_layers(zoo.load_model(zoo.DEFAULT_MODEL))
    assert sidebar.default_layer(infos) == "conv4"
    assert "✗ no KCP" in sidebar.layer_label(infos[0]) and "64×64×3×3 @ 8×8" in sidebar.layer_label(infos[3])
    assert sidebar.rank_ladder(24, 5) == [1, 2, 3, 4, 5, 6, 8, 12, 16, 24]
    assert sidebar.rank_ladder(10, 40) == [1, 2, 3, 4, 6, 8, 10]

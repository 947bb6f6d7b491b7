"""One number per point: the same decomposition of the same layer gives the same figures through the library,
the CLI's JSON, a sweep row and its CSV, and the dashboard's cached resources, for both fits."""

from __future__ import annotations

import csv
import json

import pytest

from dashboard.components import resources
from kcp.cache import ResultCache
from kcp.cli import main
from kcp.decomposition import AGREEMENT_TOL, decompose
from kcp.evaluate import evaluate
from kcp.fit import FITS
from kcp.sweep import SweepConfig, sweep
from kcp.target import LayerTarget
from kcp.zoo import LoadedModel

FIELDS = ("rel_error", "output_rel_error", "top1_agreement", "accuracy")


def at(rows: list[dict], r: int, k: int) -> dict:
    return next(row for row in rows if row["method"] == "kcp" and int(row["kt_rank"]) == r
                and int(row["cp_rank"]) == k)


def same(row: dict, reference: dict, tol: float = 1e-12) -> None:
    for field in FIELDS:
        assert float(row[field]) == pytest.approx(reference[field], abs=tol), field


@pytest.mark.slow
@pytest.mark.parametrize("fit", FITS)
def test_the_same_point_through_every_path(fit: str, digits: LoadedModel, conv4: LayerTarget, tmp_path, capsys):
    weight = conv4.conv.weight.detach()
    library = evaluate(conv4, decompose(weight, "kcp", kt_rank=2, cp_rank=4, **conv4.fit_options(fit)))
    assert library["fit"] == fit

    assert main(["decompose", "--model", "digits-cnn", "--layer", "conv4", "--kt", "2", "--cp", "4", "--fit", fit,
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    same(report, library)
    assert report["fit"] == fit and report["images"] == conv4.images

    config = SweepConfig(kt_ranks=(2,), cp_ranks=(4,), methods=("kcp",), fit=fit)
    cold = sweep(conv4, config, cache=ResultCache(tmp_path))
    same(at(cold.rows, 2, 4), library)
    path = cold.write(tmp_path / "grid.csv")
    written = at(list(csv.DictReader(path.open())), 2, 4)
    same(written, library)
    assert written["fit"] == fit

    key, target = resources.target(digits, "conv4", None)
    point = resources.Point.make("kcp", {"kt_rank": 2, "cp_rank": 4}, (8, 8, 8, 8), fit=fit)
    same(resources.metrics(key, point, True, target), library)


@pytest.mark.slow
def _warm_and_library(fit: str, conv4: LayerTarget, tmp_path) -> tuple[dict, dict]:
    library = evaluate(conv4, decompose(conv4.conv.weight.detach(), "kcp", kt_rank=2, cp_rank=4,
                                        **conv4.fit_options(fit)), fidelity=False)
    config = SweepConfig(kt_ranks=(2,), cp_ranks=(2, 4), methods=("kcp",), fit=fit, fidelity=False,
                         warm_start=True)
    return at(sweep(conv4, config, cache=ResultCache(tmp_path)).rows, 2, 4), library


def test_output_fits_ignore_warm_starts_so_a_warm_sweep_shows_the_library_value(conv4: LayerTarget, tmp_path):
    warm, library = _warm_and_library("outputs", conv4, tmp_path)
    assert not warm["warm_start"]  # an output fit always starts cold: one number per point
    for field in ("rel_error", "output_rel_error"):
        assert warm[field] == pytest.approx(library[field], rel=1e-9), field


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "a warm-started kernel fit of digits conv4 R=2 K=4 agrees with the cold one on kernel error (0.9695 vs 0.9688, "
    "within AGREEMENT_TOL) but lands in another optimum whose output error differs by about 0.011; so sweeps are "
    "cold by default and warm starts are opt-in"))
def test_a_warm_started_kernel_fit_agrees_within_the_library_tolerance(conv4: LayerTarget, tmp_path):
    """Warm starts (each point from its neighbour, opt-in) may only speed a fit up, never change its figures
    beyond the tolerance the library states."""
    warm, library = _warm_and_library("kernel", conv4, tmp_path)
    assert warm["warm_start"]
    for field in ("rel_error", "output_rel_error"):
        assert warm[field] == pytest.approx(library[field], abs=AGREEMENT_TOL), field

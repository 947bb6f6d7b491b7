"""Plans: the budget is met and never exceeded; the allocation against a brute-force optimum; uniform mode."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from kcp.network.apply import apply_plan, conv_params
from kcp.network.plan import Budget, allocate, hull


@pytest.mark.parametrize("ratio", [3.0, 12.0, 30.0])
def test_plan_meets_the_compression_budget_and_never_exceeds_it(planner, digits, ratio):
    plan = planner.plan(Budget("compression", ratio))
    dense = sum(c.weight.numel() for c in digits.convs.values())
    assert plan.dense_params == dense  # every conv counted, conv1 (kept dense) included
    assert plan.params <= dense / ratio and plan.compression >= ratio
    assert conv_params(apply_plan(digits, plan)) == plan.params  # the built network holds what the plan says


def test_a_looser_budget_never_gives_a_worse_plan(planner):
    err = [sum(layer.output_rel_error ** 2 for layer in planner.plan(Budget("compression", r)).layers)
           for r in (30.0, 12.0, 3.0)]
    assert err[0] >= err[1] >= err[2]


def test_mac_budget(planner):
    plan = planner.plan(Budget("macs", 0.25))
    assert plan.macs <= 0.25 * plan.dense_macs


def test_an_unreachable_budget_is_refused(planner):
    with pytest.raises(ValueError, match="cannot be met"):
        planner.plan(Budget("compression", 5000.0))


@pytest.mark.parametrize(("kind", "value"), [("compression", 0.5), ("macs", 1.5), ("latency", 0.0), ("size", 2)])
def test_bad_budgets(kind, value):
    with pytest.raises(ValueError):
        Budget(kind, value)


@pytest.mark.slow
def test_kcp_plan_meets_its_budget(kcp_planner):
    plan = kcp_planner.plan(Budget("compression", 30.0))
    assert plan.compression >= 30.0 and any(layer.method == "kcp" for layer in plan.layers)


@pytest.mark.slow
def test_uniform_plan_clamps_ranks_past_a_layer_and_keeps_conv1_dense(kcp_planner):
    plan = kcp_planner.uniform(2, 64)
    by_name = {layer.name: layer for layer in plan.layers}
    assert by_name["conv1"].method == "dense" and "C_in=1" in by_name["conv1"].note
    for name in ("conv2", "conv3", "conv4"):
        layer = by_name[name]
        assert layer.method == "kcp" and layer.ranks["kt_rank"] == 2 and layer.ranks["cp_rank"] < 64
        assert "clamped" in layer.note
        assert layer.params == layer.decomposition.params()


def _random_layers(rng: random.Random, convex: bool) -> dict[str, list[dict]]:
    layers = {}
    for name in "abcd":
        costs = sorted(rng.sample(range(1, 60), 5))
        if convex:  # error falling ever more slowly with cost: a convex curve
            errors = [1.0 / (1 + 0.3 * c) ** rng.uniform(0.5, 2.0) for c in costs]
        else:
            errors = [rng.random() for _ in costs]
        layers[name] = [{"params": c, "output_rel_error": e ** 0.5, "rel_error": 1.0} for c, e in zip(costs, errors)]
    return layers


def _total(choice, key):
    return sum(row[key] for row in choice.values())


def _err(choice):
    return sum(row["output_rel_error"] ** 2 for row in choice.values())


def test_allocation_never_exceeds_and_is_feasible_whenever_brute_force_is():
    rng = random.Random(0)
    for _ in range(200):
        layers = _random_layers(rng, convex=False)
        limit = rng.uniform(4, 200)
        feasible = any(sum(r["params"] for r in combo) <= limit for combo in itertools.product(*layers.values()))
        if not feasible:
            with pytest.raises(ValueError):
                allocate(layers, limit, "params")
            continue
        assert _total(allocate(layers, limit, "params"), "params") <= limit


def test_allocation_is_optimal_at_the_lagrangian_budgets():
    """For any multiplier lam, the per-layer minimisers of err + lam * cost are optimal for their own total cost;
    the greedy must find a plan as good (checked against brute force over every combination)."""
    rng = random.Random(1)
    for _ in range(50):
        layers = _random_layers(rng, convex=rng.random() < 0.5)
        lam = 10 ** rng.uniform(-4, 0)
        pick = {n: min(hull(rows, "params"), key=lambda r: r["output_rel_error"] ** 2 + lam * r["params"])
                for n, rows in layers.items()}
        limit = _total(pick, "params")
        best = min(sum(r["output_rel_error"] ** 2 for r in combo)
                   for combo in itertools.product(*layers.values()) if sum(r["params"] for r in combo) <= limit)
        got = allocate(layers, limit, "params")
        assert _total(got, "params") <= limit
        assert _err(got) == pytest.approx(best, rel=1e-9, abs=1e-12)


def test_hull_keeps_the_lower_convex_front():
    rows = [{"params": c, "output_rel_error": e ** 0.5, "rel_error": 1} for c, e in
            [(1, 1.0), (2, 0.9), (3, 0.3), (4, 0.5), (5, 0.25), (9, 0.0)]]
    assert [r["params"] for r in hull(rows, "params")] == [1, 3, 9]


def test_calibration_images_are_training_images(planner, digits_data):
    x = digits_data.calibration(8)
    assert torch.equal(x, digits_data.train_x[:8])
    flat_eval = {tuple(v.flatten().tolist()) for v in digits_data.eval_x}
    assert not any(tuple(v.flatten().tolist()) in flat_eval for v in x)


def test_a_plan_takes_its_decompositions_from_the_sweeps_cache(planner, monkeypatch):
    import kcp.sweep

    plan = planner.plan(Budget("compression", 10.0))

    def refuse(*args, **kwargs):
        raise AssertionError("a decomposition was computed again instead of read from the cache")

    monkeypatch.setattr(kcp.sweep, "decompose_point", refuse)
    chosen = [layer for layer in plan.layers if layer.decomposition is not None]
    assert chosen
    for layer in chosen:
        again = planner.decomposition(layer.name, layer.method, layer.ranks)
        torch.testing.assert_close(again.reconstruct(), layer.decomposition.reconstruct(), rtol=0, atol=0)

"""Fixtures: the offline digits model, its split, and one planner with a small grid over a private cache."""

from __future__ import annotations

import pytest

from kcp.cache import ResultCache
from kcp.network.data import network_data
from kcp.network.plan import PlanConfig, Planner
from kcp.zoo import load_model

# KT and SVD candidates at the budgets of a 3 x 3 KCP grid: a plan's sweeps in about a second.
FAST = PlanConfig(methods=("kt", "svd"), kt_ranks=(1, 2, 4), cp_ranks=(1, 2, 4), calibration_images=128)
# KCP itself on a 2 x 2 grid with few refinement sweeps (tens of seconds: for the slow tests).
KCP_SMALL = PlanConfig(methods=("kcp", "svd"), kt_ranks=(1, 2), cp_ranks=(1, 2), refine_sweeps=5,
                       calibration_images=128)


@pytest.fixture(scope="session")
def digits():
    return load_model("digits-cnn")


@pytest.fixture(scope="session")
def digits_data(digits):
    return network_data(digits)


@pytest.fixture(scope="session")
def planner(digits, digits_data, tmp_path_factory):
    return Planner(digits, digits_data, FAST, cache=ResultCache(tmp_path_factory.mktemp("network-cache")))


@pytest.fixture(scope="session")
def kcp_planner(digits, digits_data, tmp_path_factory):
    return Planner(digits, digits_data, KCP_SMALL, cache=ResultCache(tmp_path_factory.mktemp("kcp-cache")))

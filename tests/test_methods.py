"""The method table: every method is fully implemented, and its ranks and options are its function's keywords."""

import inspect

import pytest
import torch

import kcp  # noqa: F401  (importing the package registers every implementation)
from kcp import methods
from kcp.methods import BASELINES, DECOMPOSITIONS, METHODS


@pytest.mark.parametrize("name", list(METHODS))
def test_every_slot_is_filled(name):
    m = METHODS[name]
    assert callable(m.decompose) and callable(m.reconstruct) and callable(m.stages)
    assert (m.module is None) == (name == "dense")  # dense runs as nn.Conv2d itself
    if m.module is not None:
        assert m.module.method == name


@pytest.mark.parametrize("name", list(METHODS))
def test_ranks_and_options_are_the_functions_keywords(name):
    params = inspect.signature(METHODS[name].decompose).parameters
    m = METHODS[name]
    assert [p for p in params if p in m.ranks] == list(m.ranks)
    assert set(m.options) <= set(params)


@pytest.mark.parametrize("name", [n for n in METHODS if METHODS[n].family is not None])
def test_rank_family_costs_grow_and_decompose(name):
    w = torch.randn(12, 8, 3, 3, dtype=torch.float64)
    shape = kcp.make_factor_shape(w.shape)
    top, ranks_of = methods.rank_family(name, tuple(w.shape), shape)
    costs = [kcp.costs.params(name, tuple(w.shape), ranks_of(r), shape) for r in range(1, top + 1)]
    assert costs == sorted(costs)
    kwargs = {"factors": shape.channels} if METHODS[name].kronecker else {}
    result = kcp.decompose(w, name, **ranks_of(top), **kwargs)
    assert result.ranks == ranks_of(top)
    assert methods.get(name).describe(result.ranks) != "-"


def test_lists_and_errors():
    assert DECOMPOSITIONS[0] == "kcp" and "dense" not in DECOMPOSITIONS
    assert set(BASELINES) == set(DECOMPOSITIONS) - {"kcp"}
    with pytest.raises(ValueError, match="unknown method 'hosvd': use one of dense, kcp"):
        methods.get("hosvd")
    with pytest.raises(TypeError, match="no slot"):
        methods.implements("kcp", "colour")

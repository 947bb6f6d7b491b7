"""Fine-tuning's training paths and memory format, the uniform grid on a local pool, and the CIFAR sample data."""

from __future__ import annotations

import copy
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kcp.cache import ResultCache
from kcp.engines import Engine, make_engine
from kcp.latency import LatencySettings
from kcp.modules import KCPConv2d, from_conv
from kcp.network import run as run_module
from kcp.network.apply import predictions
from kcp.network.data import network_data
from kcp.network.finetune import FinetuneConfig, finetune, training_execution
from kcp.network.run import RunSettings, Session
from kcp.zoo import load_model


def _kcp(in_c: int, out_c: int, kt_rank: int, cp_rank: int) -> KCPConv2d:
    torch.manual_seed(0)
    conv = nn.Conv2d(in_c, out_c, 3, padding=1, bias=False)
    return from_conv(conv, "kcp", kt_rank=kt_rank, cp_rank=cp_rank, refine_sweeps=0)


@pytest.mark.parametrize(("in_c", "out_c", "kt", "cp", "path"), [
    (32, 32, 1, 4, "layered"),   # width R K^2 = 16: half of 32
    (32, 32, 2, 2, "layered"),   # width 8
    (32, 32, 8, 2, "full"),      # width 32
    (64, 64, 8, 2, "layered"),   # width 32: half of 64
    (32, 64, 4, 4, "full"),      # width 64, wider than the layer
])
def test_training_execution_is_layered_only_for_chains_at_most_half_the_layers_width(in_c, out_c, kt, cp, path):
    module = SimpleNamespace(width=kt * cp * cp, in_channels=in_c, out_channels=out_c)  # all the rule reads
    assert training_execution(module) == path


def test_every_training_path_gives_the_dense_convs_gradients():
    module = _kcp(16, 16, 2, 2)
    x = torch.randn(4, 16, 8, 8)
    grads = {}
    for path in ("layered", "full"):
        module.execution = path
        module.zero_grad()
        out = module(x)
        # The independent reference: the reconstructed kernel as one F.conv2d.
        torch.testing.assert_close(out, F.conv2d(x, module.decomposition().reconstruct(), padding=1),
                                   rtol=1e-4, atol=1e-4)
        out.square().sum().backward()
        grads[path] = {n: p.grad.clone() for n, p in module.named_parameters()}
    for name, grad in grads["full"].items():
        torch.testing.assert_close(grads["layered"][name], grad, rtol=1e-3, atol=1e-4)


def _kcp_digits(digits) -> nn.Module:
    """digits-cnn with conv2-conv4 as KCP at R=1 K=2 (no refinement: quick)."""
    net = copy.deepcopy(digits.model)
    for name in ("conv2", "conv3", "conv4"):
        net.set_submodule(name, from_conv(getattr(net, name), "kcp", kt_rank=1, cp_rank=2, refine_sweeps=0))
    return net


def test_channels_last_training_matches_the_standard_format_and_restores_the_network(digits, digits_data):
    data = replace(digits_data, eval_x=digits_data.eval_x[:64], eval_y=digits_data.eval_y[:64])
    reference = predictions(digits.model, data.eval_x)
    nets, curves = [], []
    for channels_last in (False, True):
        net = _kcp_digits(digits)
        config = FinetuneConfig(steps=3, batch=32, eval_every=3, channels_last=channels_last)
        curves.append(finetune(net, data, reference_eval=reference, config=config).curve)
        nets.append(net)
    assert [p["accuracy"] for p in curves[0]] == [p["accuracy"] for p in curves[1]]
    assert curves[0][-1]["loss"] == pytest.approx(curves[1][-1]["loss"], rel=1e-4)
    for (name, p0), (_, p1) in zip(nets[0].named_parameters(), nets[1].named_parameters(), strict=True):
        torch.testing.assert_close(p1, p0, rtol=1e-3, atol=1e-5, msg=name)
        assert p1.is_contiguous(), f"{name} left in channels_last"
    assert {m.execution for m in nets[1].modules() if isinstance(m, KCPConv2d)} == {"layered"}


class _NoTasks(Engine):
    """An engine that refuses work: every point must come from the cache."""

    @staticmethod
    def submit(fn, *args, **kwargs):
        raise AssertionError("a point was trained again, but it was cached")


def _session(loaded, data, plan_config, cache, engine=None) -> Session:
    settings = RunSettings(plan=plan_config, finetune=FinetuneConfig(steps=4, batch=32, eval_every=2),
                           latency=LatencySettings(runs=3, warmup=1, min_run_time=0.01))
    return Session(loaded, data, settings, cache=cache, engine=engine)


SAME = ("kt_rank", "cp_rank", "compression", "params", "macs", "accuracy_zero_shot", "accuracy_finetuned",
        "top1_agreement_finetuned", "finetune_steps", "latency_ms")


@pytest.mark.slow
def test_the_grid_on_a_local_pool_matches_in_process_and_resumes_from_its_cache(digits, digits_data, kcp_planner,
                                                                                tmp_path):
    config = kcp_planner.config
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the pool's workers run one thread each: the same arithmetic
    try:
        inline, cancelled = _session(digits, digits_data, config, ResultCache(tmp_path / "a")).grid((1, 2), (2,))
    finally:
        torch.set_num_threads(threads)
    assert not cancelled
    cache = ResultCache(tmp_path / "b")
    with make_engine("local", workers=2) as engine:
        pooled, cancelled = _session(digits, digits_data, config, cache, engine).grid((1, 2), (2,))
    assert not cancelled
    assert [(r["kt_rank"], r["cp_rank"]) for r in pooled] == [(1, 2), (2, 2)]
    for a, b in zip(inline, pooled, strict=True):
        for key in SAME[:-1]:
            assert a[key] == b[key], key
        assert [p["step"] for p in a["finetune"]["curve"]] == [p["step"] for p in b["finetune"]["curve"]]
        assert b["latency_ms"] > 0  # timed on the driver after the pool's work
    again, cancelled = _session(digits, digits_data, config, cache, _NoTasks()).grid((1, 2), (2,))
    assert not cancelled and [[r[k] for k in SAME] for r in again] == [[r[k] for k in SAME] for r in pooled]


@pytest.mark.slow
def test_a_point_trained_but_not_timed_is_timed_on_a_rerun_without_training_again(digits, digits_data, kcp_planner,
                                                                                    tmp_path, monkeypatch):
    cache = ResultCache(tmp_path)
    first, _ = _session(digits, digits_data, kcp_planner.config, cache).grid((1,), (2,))
    session = _session(digits, digits_data, kcp_planner.config, cache)
    monkeypatch.setattr(run_module, "grid_point", _NoTasks.submit)
    key = session._point_key(1, 2)
    cache.put(key, {"report": {**first[0], "latency_ms": None}, "untimed": True})
    again, _ = session.grid((1,), (2,))
    assert again[0]["latency_ms"] > 0 and again[0]["accuracy_finetuned"] == first[0]["accuracy_finetuned"]
    assert "untimed" not in cache.get(key)


@pytest.fixture
def cifar_sample_data(torch_home, shared_weights):
    name = "resnet20-12fca82f.th"
    (torch_home / "hub" / "checkpoints" / name).symlink_to(shared_weights / name)
    return network_data(load_model("cifar-resnet20", download=False))


def test_models_without_labels_train_and_evaluate_on_different_photos(cifar_sample_data):
    data = cifar_sample_data
    assert data.train_y is None and data.eval_y is None
    flat_train, flat_eval = data.train_x.flatten(1), data.eval_x.flatten(1)
    assert len(flat_train) == len(flat_eval) > 0
    # No evaluation image is any training image (the two halves of the photos share no crop).
    assert not any(torch.equal(e, t) for e in flat_eval for t in flat_train)

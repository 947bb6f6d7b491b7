"""Applying a plan, fine-tuning, saving and ONNX export of a compressed digits network."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kcp.export import load_network, save_network
from kcp.modules import FactorisedConv2d
from kcp.network.apply import apply_plan, predictions, scores
from kcp.network.finetune import FinetuneConfig, finetune
from kcp.network.plan import Budget


@pytest.fixture(scope="module")
def plan(planner):
    return planner.plan(Budget("compression", 30.0))


@pytest.fixture(scope="module")
def small_data(digits_data):
    """The split with 64 held-out images: enough for the mechanics, quick to evaluate."""
    from dataclasses import replace

    return replace(digits_data, eval_x=digits_data.eval_x[:64], eval_y=digits_data.eval_y[:64])


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_apply_replaces_the_chosen_convs_and_leaves_the_original_unchanged(digits, digits_data, plan):
    before = _snapshot(digits.model)
    net = apply_plan(digits, plan)
    reference = predictions(digits.model, digits_data.eval_x)
    finetune(net, digits_data, reference_eval=reference, config=FinetuneConfig(steps=2, batch=32))
    after = digits.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(type(m) is torch.nn.Conv2d for m in digits.convs.values())
    for layer in plan.layers:
        module = net.get_submodule(layer.name)
        if layer.decomposition is None:
            assert type(module) is torch.nn.Conv2d
            continue
        assert isinstance(module, FactorisedConv2d)
        fresh = apply_plan(digits, plan).get_submodule(layer.name)
        x = torch.randn(3, module.in_channels, 16, 16)
        conv = digits.convs[layer.name]
        expected = F.conv2d(x, layer.decomposition.reconstruct(), conv.bias, conv.stride, conv.padding)
        torch.testing.assert_close(fresh(x), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_finetuning_raises_held_out_accuracy(digits, digits_data, kcp_planner):
    reference = predictions(digits.model, digits_data.eval_x)
    net = apply_plan(digits, kcp_planner.uniform(2, 2))
    zero = scores(predictions(net, digits_data.eval_x), digits_data.eval_y, reference)["accuracy"]
    result = finetune(net, digits_data, reference_eval=reference, config=FinetuneConfig(steps=60, batch=64))
    assert result.curve[0]["accuracy"] == pytest.approx(zero)
    # Evaluated on the test split, which fine-tuning never sees.
    assert result.final["accuracy"] == scores(predictions(net, digits_data.eval_x), digits_data.eval_y,
                                              reference)["accuracy"]
    assert result.final["accuracy"] > zero + 0.3


def test_finetuning_reports_progress_and_is_deterministic(digits, small_data, plan):
    reference = predictions(digits.model, small_data.eval_x)
    config = FinetuneConfig(steps=4, batch=16, eval_every=2)
    runs = []
    for _ in range(2):
        steps_seen: list[int] = []
        result = finetune(apply_plan(digits, plan), small_data, reference_eval=reference, config=config,
                          progress=lambda step, total, point, seen=steps_seen: seen.append(step))
        assert steps_seen == [1, 2, 3, 4] and [p["step"] for p in result.curve] == [0, 2, 4]
        runs.append([(p["loss"], p["accuracy"]) for p in result.curve])
    assert runs[0] == runs[1]


def test_finetuning_stops_when_asked(digits, small_data, plan):
    reference = predictions(digits.model, small_data.eval_x)
    calls = iter(range(100))
    result = finetune(apply_plan(digits, plan), small_data, reference_eval=reference,
                      config=FinetuneConfig(steps=50, batch=16), should_stop=lambda: next(calls) >= 3)
    assert result.cancelled and result.steps == 3 and result.curve[-1]["step"] == 3


def test_finetuning_without_labels_needs_distillation(digits, small_data, plan):
    from dataclasses import replace

    unlabelled = replace(small_data, train_y=None)
    reference = predictions(digits.model, small_data.eval_x)
    with pytest.raises(ValueError, match="distill"):
        finetune(apply_plan(digits, plan), unlabelled, reference_eval=reference)
    net = apply_plan(digits, plan)
    result = finetune(net, unlabelled, reference_eval=reference, teacher=digits.model,
                      config=FinetuneConfig(steps=3, batch=16, distill=True, eval_every=1))
    assert result.steps == 3 and result.final["loss"] > 0
    # Distillation keeps the dense network's batch-norm statistics (the teacher's); the factors did train.
    for name in ("bn2.running_mean", "bn2.running_var", "bn4.running_mean"):
        assert torch.equal(net.get_buffer(name), digits.model.get_buffer(name))
    assert any(not torch.equal(p, q) for p, q in zip(net.fc.parameters(), digits.model.fc.parameters()))


def test_a_saved_network_loads_back_with_the_same_outputs(digits, small_data, plan, tmp_path):
    net = apply_plan(digits, plan)
    finetune(net, small_data, reference_eval=predictions(digits.model, small_data.eval_x),
             config=FinetuneConfig(steps=3, batch=32))
    save_network(tmp_path / "net.pt", net, digits.arch, {"model": digits.name})
    loaded, meta = load_network(tmp_path / "net.pt")
    assert meta == {"model": "digits-cnn", "arch": "digits-cnn"}
    x = small_data.eval_x[:32]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=1e-6)
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a compressed-network file"):
        load_network(tmp_path / "other.pt")


@pytest.mark.slow
def test_onnx_export_matches_pytorch_in_onnxruntime(digits, digits_data, kcp_planner, tmp_path):
    from kcp.network.onnx_export import check_onnx, export_onnx

    net = apply_plan(digits, kcp_planner.uniform(2, 2))
    export_onnx(net, tmp_path / "net.onnx", digits.input_size)
    check = check_onnx(tmp_path / "net.onnx", net, digits_data.eval_x[:50], runs=3)
    assert check["max_abs_diff"] < 1e-4 * max(1.0, check["max_abs_output"])
    assert {"Conv", "Einsum"} <= set(check["op_types"])  # the KCP chain is in the graph, not a dense kernel

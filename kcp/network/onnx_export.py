"""ONNX export of a compressed network, built from standard operators only, checked in onnxruntime."""

from __future__ import annotations

import copy
import io
import logging
import os
import time
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from kcp.latency import percentiles
from kcp.network.apply import set_execution

OPSET = 18
STANDARD_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class OnnxCheck:
    """onnxruntime against PyTorch on the same real inputs, and both timed on one image (CPU)."""

    path: str
    exporter: str
    opset: int
    op_types: tuple[str, ...]
    max_abs_diff: float
    max_abs_output: float
    ort_latency_ms: float
    torch_latency_ms: float

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


def _standard_only(model) -> tuple[str, ...]:
    """The graph's op types; a ValueError if any node (or local function) is outside the ONNX standard domain."""
    import onnx
    from onnx import inliner

    model = inliner.inline_local_functions(model)
    odd = sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in STANDARD_DOMAINS})
    if odd or model.functions:
        raise ValueError(f"the ONNX graph uses non-standard operators {odd or [f.name for f in model.functions]}")
    onnx.checker.check_model(model)
    return tuple(sorted({n.op_type for n in model.graph.node}))


def export_onnx(net: nn.Module, path: str | os.PathLike, input_size: tuple[int, int, int], *,
                opset: int = OPSET) -> str:
    """Write ``net`` (a copy in eval mode, KCP modules on their 'layered' path) as ONNX with a dynamic batch.

    Uses torch's dynamo exporter (onnxscript); returns which exporter wrote the file."""
    model = copy.deepcopy(net).eval()
    set_execution(model, "layered")
    x = torch.zeros(2, *input_size)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad(), io.StringIO() as sink:
        warnings.simplefilter("ignore")
        from contextlib import redirect_stdout

        with redirect_stdout(sink):
            program = torch.onnx.export(model, (x,), dynamo=True, opset_version=opset, input_names=["images"],
                                        output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},),
                                        verbose=False)
            program.optimize()
            program.save(os.fspath(path))
    return "torch.onnx.export(dynamo=True)"


def check_onnx(path: str | os.PathLike, net: nn.Module, inputs: torch.Tensor, *, runs: int = 30) -> dict:
    """Run the file in onnxruntime on ``inputs`` (real images) against ``net`` in PyTorch, and time both."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(os.fspath(path))
    ops = _standard_only(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    net = net.eval()
    with torch.no_grad():
        ref = net(inputs)
    got = torch.from_numpy(session.run(None, {name: inputs.numpy()})[0])
    one = inputs[:1].numpy()
    ort_ms = _time(lambda: session.run(None, {name: one}), runs)
    with torch.inference_mode():
        torch_ms = _time(lambda: net(inputs[:1]), runs)
    return OnnxCheck(os.fspath(path), "torch.onnx.export(dynamo=True)", model.opset_import[0].version, ops,
                     float((got - ref).abs().max()), float(ref.abs().max()), ort_ms, torch_ms).to_dict()


def _time(fn, runs: int) -> float:
    for _ in range(3):
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return percentiles(samples)[0]

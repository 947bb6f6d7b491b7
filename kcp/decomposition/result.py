"""The one result type every decomposition method returns."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from kcp import costs, methods
from kcp.geometry import ConvGeometry
from kcp.kron import FactorShape


def _plain(value: Any) -> bool:
    """A number, string or bool, or a list of numbers (such as the output fit's objective per iteration)."""
    if isinstance(value, list):
        return all(isinstance(v, (int, float)) for v in value)
    return isinstance(value, (int, float, str, bool))


@dataclass
class Decomposition:
    """Factors of one conv kernel under one method, with what they cost and how well they fit.

    ``ranks`` are the keyword arguments of the method's function (named in :data:`kcp.methods.METHODS`), so
    ``decompose(weight, result.method, **result.ranks)`` decomposes again. ``history`` is the
    relative kernel error after the initialisation and after every refinement sweep (methods
    without refinement hold one value). ``info`` holds notes such as why a refinement was skipped,
    the sweeps run, the seed.
    """

    method: str
    kernel_shape: tuple[int, int, int, int]
    ranks: dict[str, int]
    factors: dict[str, torch.Tensor]
    factor_shape: FactorShape | None = None
    rel_error: float = float("nan")
    history: list[float] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def placement(self) -> str | None:
        return self.factor_shape.placement if self.factor_shape else None

    def reconstruct(self) -> torch.Tensor:
        """The kernel this decomposition stands for (O x I x k_h x k_w)."""
        return methods.get(self.method).reconstruct(self)

    def params(self, bias: bool = False) -> int:
        """Parameters of the factorised layer (plus C_out for a bias)."""
        return costs.params(self.method, self.kernel_shape, self.ranks, self.factor_shape, bias)

    def dense_params(self, bias: bool = False) -> int:
        out_c, in_c, kh, kw = self.kernel_shape
        return out_c * in_c * kh * kw + (out_c if bias else 0)

    def compression(self) -> float:
        """Dense kernel parameters over factorised parameters (no bias on either side)."""
        return self.dense_params() / max(self.params(), 1)

    def stages(
        self,
        in_hw: tuple[int, int],
        geometry: ConvGeometry | None = None,
        bias: bool = False,
        execution: str = "layered",
    ) -> list[costs.Stage]:
        """The layers of the factorised module with their shapes, parameters and MACs."""
        return costs.stages(self.method, self.kernel_shape, self.ranks, in_hw, geometry, self.factor_shape, bias,
                            execution)

    def macs(self, in_hw: tuple[int, int], geometry: ConvGeometry | None = None, execution: str = "layered") -> int:
        """Multiply-accumulates for one image of size ``in_hw`` (FLOPs = 2 x MACs)."""
        return costs.macs(self.method, self.kernel_shape, self.ranks, in_hw, geometry, self.factor_shape, execution)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Decomposition:
        """A copy with the factors moved and/or cast."""
        return replace(self, factors={k: v.to(device=device, dtype=dtype) for k, v in self.factors.items()})

    def state(self) -> dict[str, Any]:
        """A plain dict (tensors, numbers, strings) that ``torch.load(weights_only=True)`` can read back."""
        fs = self.factor_shape
        return {
            "method": self.method,
            "kernel_shape": list(self.kernel_shape),
            "ranks": dict(self.ranks),
            "factors": {k: v.detach().cpu() for k, v in self.factors.items()},
            "factor_shape": None if fs is None else [fs.out_a, fs.out_b, fs.in_a, fs.in_b,
                                                     fs.ka_h, fs.ka_w, fs.kb_h, fs.kb_w],
            "rel_error": self.rel_error,
            "history": list(self.history),
            "info": {k: v for k, v in self.info.items() if _plain(v)},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Decomposition:
        """Inverse of :meth:`state`."""
        fs = state.get("factor_shape")
        return cls(
            method=state["method"],
            kernel_shape=tuple(state["kernel_shape"]),
            ranks=dict(state["ranks"]),
            factors=dict(state["factors"]),
            factor_shape=None if fs is None else FactorShape(*fs),
            rel_error=float(state["rel_error"]),
            history=list(state.get("history", [])),
            info=dict(state.get("info", {})),
        )

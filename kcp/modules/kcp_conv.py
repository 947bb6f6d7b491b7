"""KCPConv2d: the four-layer structure that runs a KCP decomposition.

The R*K^2 channels between the layers are indexed (r, c, d): r the KT term, c a component of A_r's
CP, d one of B_r's. L1 contracts the input channels (viewed as I_A x I_B) with the in-factors, L2
and L3 are depthwise k_h x 1 and 1 x k_w convs whose filters are ``a (x) b``, and L4 contracts
(r, c, d) into the output channels (O_A x O_B), adding the bias.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kcp.costs import EXECUTIONS
from kcp.decomposition import Decomposition
from kcp.geometry import ConvGeometry
from kcp.kernels import FAST_PATHS, FUSED_VARIANTS, choose, path_supported, run_path
from kcp.kernels.prepare import needs_grad
from kcp.modules.base import FactorisedConv2d, depthwise_h, depthwise_w

_SPATIAL = ("a_h", "b_h", "a_w", "b_w")
# What the module can run; kcp.costs.EXECUTIONS (the two whose MACs it accounts) is a subset.
MODULE_PATHS = (*EXECUTIONS, *FAST_PATHS, "auto")


class KCPConv2d(FactorisedConv2d):
    """Drop-in conv running 2nd-order KCP factors as L1 (in contraction), L2/L3 (thin spatial), L4 (out).

    ``execution='layered'`` runs L1 and L4 as two small contractions each (fewest MACs);
    ``'dense'`` materialises each as one 1x1 conv whose weight columns are ``a (x) b`` (more MACs,
    one GEMM). Both give the same output. The fast paths of :mod:`kcp.kernels` give it too:
    ``'merged'`` (L1-L3 as one k_h x k_w conv, then a 1x1 conv), ``'full'`` (the reconstructed kernel as
    one conv), ``'fused'`` (L1 as one GEMM, then one Triton kernel for L2-L4) and ``'fused_all'`` (one
    Triton kernel for the whole chain); the Triton ones run on CUDA (or under Triton's interpreter)
    without autograd, and raise a ValueError saying why otherwise. ``'auto'`` times every path that can
    run on the first input of each device, dtype, memory format and shape, keeps the fastest, and says
    what it picked and why in ``last_choice``.
    """

    method = "kcp"

    def __init__(self, result: Decomposition, geometry: ConvGeometry, bias: torch.Tensor | None,
                 execution: str = "layered") -> None:
        super().__init__(result, geometry, bias)
        f = {k: v.detach().clone() for k, v in result.factors.items()}
        # Size-1 spatial factors carry no parameters: fold their values into the same side's out-factor.
        for side in ("a", "b"):
            for key in (f"{side}_h", f"{side}_w"):
                if f[key].shape[1] == 1:
                    f[f"{side}_out"] = f[f"{side}_out"] * f[key]
        for key in ("a_in", "b_in", "a_out", "b_out"):
            setattr(self, key, nn.Parameter(f[key]))
        for key in _SPATIAL:
            setattr(self, key, nn.Parameter(f[key]) if f[key].shape[1] > 1 else None)
        self.execution = execution
        self.last_choice: str | None = None

    @property
    def execution(self) -> str:
        return self._execution

    @execution.setter
    def execution(self, value: str) -> None:
        if value not in MODULE_PATHS:
            raise ValueError(f"execution must be one of {', '.join(MODULE_PATHS)}, got {value!r}")
        self._execution = value

    @property
    def width(self) -> int:
        """Channels between the layers: R * K^2."""
        return self.ranks["kt_rank"] * self.ranks["cp_rank"] ** 2

    def factors(self) -> dict[str, torch.Tensor]:
        r, k = self.ranks["kt_rank"], self.ranks["cp_rank"]
        out = {key: getattr(self, key) for key in ("a_out", "a_in", "b_out", "b_in")}
        for key in _SPATIAL:
            p = getattr(self, key)
            out[key] = p if p is not None else torch.ones(r, 1, k, dtype=self.a_in.dtype, device=self.a_in.device)
        return out

    def spatial_filters(self, dim: str) -> torch.Tensor | None:
        """Depthwise filters of L2 (``dim='h'``) or L3 (``'w'``): channel (r, c, d) gets ``a[r,:,c] (x) b[r,:,d]``."""
        a, b = getattr(self, f"a_{dim}"), getattr(self, f"b_{dim}")
        if a is None and b is None:
            return None
        r, k = self.ranks["kt_rank"], self.ranks["cp_rank"]
        if b is None:
            filt = a.permute(0, 2, 1).unsqueeze(2).expand(r, k, k, a.shape[1])
        elif a is None:
            filt = b.permute(0, 2, 1).unsqueeze(1).expand(r, k, k, b.shape[1])
        else:
            filt = a.permute(0, 2, 1)[:, :, None, :, None] * b.permute(0, 2, 1)[:, None, :, None, :]
        return filt.reshape(r * k * k, -1)

    def in_weight(self) -> torch.Tensor:
        """L1 as one 1x1 conv weight (R K^2, I): column (ia, ib) of row (r, c, d) is a_in[r,ia,c] b_in[r,ib,d]."""
        a, b = self.a_in.permute(0, 2, 1), self.b_in.permute(0, 2, 1)
        w = a[:, :, None, :, None] * b[:, None, :, None, :]
        return w.reshape(self.width, self.in_channels, 1, 1)

    def out_weight(self) -> torch.Tensor:
        """L4 as one 1x1 conv weight (O, R K^2)."""
        a, b = self.a_out, self.b_out  # (R, O_A, K), (R, O_B, K)
        w = a.permute(1, 0, 2)[:, None, :, :, None] * b.permute(1, 0, 2)[None, :, :, None, :]
        return w.reshape(self.out_channels, self.width, 1, 1)

    def _contract_in(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        r, k = self.ranks["kt_rank"], self.ranks["cp_rank"]
        ia, ib = self.a_in.shape[1], self.b_in.shape[1]
        xv = x.reshape(n, ia, ib, h * w)
        if ib >= ia:  # contract the larger sub-mode first: fewer MACs in the second step
            t = torch.matmul(self.b_in.permute(0, 2, 1).reshape(r * k, ib), xv).reshape(n, ia, r, k, h * w)
            z = torch.einsum("ric,nirdp->nrcdp", self.a_in, t)
        else:
            t = torch.matmul(self.a_in.permute(0, 2, 1).reshape(r * k, ia), xv.reshape(n, ia, ib * h * w))
            z = torch.einsum("rjd,nrcjp->nrcdp", self.b_in, t.reshape(n, r, k, ib, h * w))
        return z.reshape(n, self.width, h, w)

    def _contract_out(self, z: torch.Tensor) -> torch.Tensor:
        n, _, h, w = z.shape
        r, k = self.ranks["kt_rank"], self.ranks["cp_rank"]
        oa, ob = self.a_out.shape[1], self.b_out.shape[1]
        zv = z.reshape(n, r, k, k, h * w)
        if oa <= ob:  # expand the smaller sub-mode first
            u = torch.einsum("rac,nrcdp->nradp", self.a_out, zv)
            y = torch.einsum("rbd,nradp->nabp", self.b_out, u)
        else:
            u = torch.einsum("rbd,nrcdp->nrcbp", self.b_out, zv)
            y = torch.einsum("rac,nrcbp->nabp", self.a_out, u)
        return y.reshape(n, self.out_channels, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        path = self._auto_path(x) if self.execution == "auto" else self.execution
        return self._run(x, path)

    def _run(self, x: torch.Tensor, path: str) -> torch.Tensor:
        if path in FAST_PATHS:
            return run_path(self, x, path)
        top, bottom, left, right = self.pads()
        kh, kw = self.kernel_size
        if path == "dense":
            z = F.conv2d(x, self.in_weight())
        else:
            z = self._contract_in(x)
        z = depthwise_h(z, self.spatial_filters("h"), self.geometry, kh, (top, bottom))
        z = depthwise_w(z, self.spatial_filters("w"), self.geometry, kw, (left, right))
        if path == "dense":
            return F.conv2d(z, self.out_weight(), self.bias)
        y = self._contract_out(z)
        return y if self.bias is None else y + self.bias.reshape(1, -1, 1, 1)

    def _auto_path(self, x: torch.Tensor) -> str:
        """The path 'auto' runs for this kind of input: timed once per key, then remembered."""
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        key = (str(x.device), x.dtype, channels_last, tuple(x.shape), needs_grad(self, x))
        choices = self.__dict__.setdefault("_auto_choices", {})
        if key not in choices:
            choices[key] = self._choose(x)
        path, self.last_choice = choices[key]
        return path

    def _choose(self, x: torch.Tensor) -> tuple[str, str]:
        candidates, skipped = list(EXECUTIONS), {}
        for path in FAST_PATHS:
            ok, why = path_supported(self, x, path)
            if ok and path in FUSED_VARIANTS and x.device.type != "cuda":
                ok, why = False, "Triton's CPU interpreter is for tests, not speed"
            if ok:
                candidates.append(path)
            else:
                skipped[path] = why
        tol = 1e-2 if x.dtype == torch.float32 else 5e-2
        return choose(lambda p: self._run(x, p), candidates, skipped, x.device, tol)

"""The baselines' modules: KT only (GKPD), CP (Lebedev), Tucker-2 (Kim) and SVD (Zhang)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kcp.decomposition import Decomposition
from kcp.geometry import ConvGeometry
from kcp.modules.base import FactorisedConv2d, conv, depthwise_h, depthwise_w, pad


class KTConv2d(FactorisedConv2d):
    """GKPD: a conv with the B factors (I_A folded into the batch), then one with A (O_B in the batch).

    Each spatial dimension belongs to the factor that holds its extent (``split``: rows to A,
    columns to B; ``a-spatial``: both to A); its stride, dilation and padding apply at that stage.
    """

    method = "kt"

    def __init__(self, result: Decomposition, geometry: ConvGeometry, bias: torch.Tensor | None) -> None:
        super().__init__(result, geometry, bias)
        self.a = nn.Parameter(result.factors["a"].detach().clone())  # (R, O_A, I_A, kA_h, kA_w)
        self.b = nn.Parameter(result.factors["b"].detach().clone())  # (R, O_B, I_B, kB_h, kB_w)
        b_owns_w = self.factor_shape.placement == "split"
        g = geometry
        self._b_owns_w = b_owns_w
        self._stage_geometry = [
            ConvGeometry((1, g.stride[1] if b_owns_w else 1), (0, 0), (1, g.dilation[1]), g.padding_mode),
            ConvGeometry((g.stride[0], 1 if b_owns_w else g.stride[1]), (0, 0), g.dilation, g.padding_mode),
        ]

    def factors(self) -> dict[str, torch.Tensor]:
        return {"a": self.a, "b": self.b}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        r, oa, ia, kah, kaw = self.a.shape
        _, ob, ib, kbh, kbw = self.b.shape
        top, bottom, left, right = self.pads()
        b_geo, a_geo = self._stage_geometry
        b_owns_w = self._b_owns_w
        xb = pad(x, 0, 0, left, right, self.geometry.padding_mode) if b_owns_w else x
        xb = xb.reshape(n * ia, ib, xb.shape[2], xb.shape[3])
        z = conv(xb, self.b.reshape(r * ob, ib, kbh, kbw), b_geo)  # (N*I_A, R*O_B, H_b, W_b)
        hb, wb = z.shape[2:]
        z = z.reshape(n, ia, r, ob, hb, wb).permute(0, 3, 1, 2, 4, 5).reshape(n * ob, ia * r, hb, wb)
        z = pad(z, top, bottom, 0 if b_owns_w else left, 0 if b_owns_w else right, self.geometry.padding_mode)
        weight_a = self.a.permute(1, 2, 0, 3, 4).reshape(oa, ia * r, kah, kaw)
        y = conv(z, weight_a, a_geo)  # (N*O_B, O_A, H', W')
        ho, wo = y.shape[2:]
        y = y.reshape(n, ob, oa, ho, wo).transpose(1, 2).reshape(n, oa * ob, ho, wo)
        return y if self.bias is None else y + self.bias.reshape(1, -1, 1, 1)


class CPConv2d(FactorisedConv2d):
    """Lebedev's four layers: 1x1 I->R, depthwise k_h x 1, depthwise 1 x k_w, 1x1 R->O (+ bias)."""

    method = "cp"

    def __init__(self, result: Decomposition, geometry: ConvGeometry, bias: torch.Tensor | None) -> None:
        super().__init__(result, geometry, bias)
        f = {k: v.detach().clone() for k, v in result.factors.items()}
        # Size-1 spatial modes carry no parameters: their values fold into the out-factor.
        for key in ("h", "w"):
            if f[key].shape[0] == 1:
                f["out"] = f["out"] * f[key]
        self.u_in = nn.Parameter(f["in"])
        self.u_out = nn.Parameter(f["out"])
        self.u_h = nn.Parameter(f["h"]) if f["h"].shape[0] > 1 else None
        self.u_w = nn.Parameter(f["w"]) if f["w"].shape[0] > 1 else None

    def factors(self) -> dict[str, torch.Tensor]:
        r = self.ranks["rank"]
        ones = torch.ones(1, r, dtype=self.u_in.dtype, device=self.u_in.device)
        return {"out": self.u_out, "in": self.u_in, "h": self.u_h if self.u_h is not None else ones,
                "w": self.u_w if self.u_w is not None else ones}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom, left, right = self.pads()
        kh, kw = self.kernel_size
        r = self.ranks["rank"]
        z = F.conv2d(x, self.u_in.T.reshape(r, self.in_channels, 1, 1))
        z = depthwise_h(z, None if self.u_h is None else self.u_h.T, self.geometry, kh, (top, bottom))
        z = depthwise_w(z, None if self.u_w is None else self.u_w.T, self.geometry, kw, (left, right))
        return F.conv2d(z, self.u_out.reshape(self.out_channels, r, 1, 1), self.bias)


class Tucker2Conv2d(FactorisedConv2d):
    """Kim's three layers: 1x1 I->R_i, k_h x k_w R_i->R_o with the conv's geometry, 1x1 R_o->O (+ bias)."""

    method = "tucker2"

    def __init__(self, result: Decomposition, geometry: ConvGeometry, bias: torch.Tensor | None) -> None:
        super().__init__(result, geometry, bias)
        self.u_in = nn.Parameter(result.factors["in"].detach().clone())
        self.core = nn.Parameter(result.factors["core"].detach().clone())
        self.u_out = nn.Parameter(result.factors["out"].detach().clone())

    def factors(self) -> dict[str, torch.Tensor]:
        return {"in": self.u_in, "core": self.core, "out": self.u_out}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ri, ro = self.u_in.shape[1], self.u_out.shape[1]
        z = F.conv2d(x, self.u_in.T.reshape(ri, self.in_channels, 1, 1))
        z = conv(z, self.core, self.geometry)
        return F.conv2d(z, self.u_out.reshape(self.out_channels, ro, 1, 1), self.bias)


class SVDConv2d(FactorisedConv2d):
    """Zhang's two layers: k_h x k_w I->r with the conv's geometry, then 1x1 r->O (+ bias)."""

    method = "svd"

    def __init__(self, result: Decomposition, geometry: ConvGeometry, bias: torch.Tensor | None) -> None:
        super().__init__(result, geometry, bias)
        self.first = nn.Parameter(result.factors["first"].detach().clone())
        self.second = nn.Parameter(result.factors["second"].detach().clone())

    def factors(self) -> dict[str, torch.Tensor]:
        return {"first": self.first, "second": self.second}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.first.shape[0]
        return F.conv2d(conv(x, self.first, self.geometry), self.second.reshape(self.out_channels, r, 1, 1), self.bias)

"""Weights of the fast paths, derived from a KCPConv2d's factors and cached between calls.

Every fast path runs the same four-layer chain with its weights regrouped: ``W1`` (I -> M, the dense
L1), the k_h x k_w separable filter of each middle channel (``taps``), and ``W4`` (M -> O). Building
them costs a handful of small kernel launches, which would dominate small layers, so they are cached
on the module.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

_CACHE_ATTR = "_fast_path_weights"


def needs_grad(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether autograd would record this call (the Triton kernels have no backward)."""
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in module.parameters()))


def _version(module: nn.Module) -> tuple:
    return tuple((p.data_ptr(), p._version) for p in module.parameters())


# What each path needs: name -> (builder, dtype: None for the input's, else fixed).
def _recipes(module: nn.Module) -> dict[str, dict[str, tuple[Callable[[], torch.Tensor | None], torch.dtype | None]]]:
    bias = lambda: module.bias
    return {
        "fused": {"w_in": (lambda: w_in(module), None), "taps": (lambda: taps(module), torch.float32),
                  "w_out": (lambda: w_out(module), None), "bias": (bias, torch.float32)},
        "fused_all": {"w_taps": (lambda: w_taps(module), None), "w_out": (lambda: w_out(module), None),
                      "bias": (bias, torch.float32)},
        "merged": {"w_mid": (lambda: w_merged(module), None), "w_out": (module.out_weight, None), "bias": (bias, None)},
        "full": {"w_full": (lambda: w_full(module), None), "bias": (bias, None)},
    }


def weights(module: nn.Module, path: str, dtype: torch.dtype, device: torch.device,
            use_cache: bool = True) -> dict[str, torch.Tensor | None]:
    """The tensors fast path ``path`` runs on (GEMM operands in ``dtype``), remembered on the module until a
    parameter changes (new storage or an in-place update).

    With ``use_cache=False`` (autograd recording) they are rebuilt every call so that gradients flow.
    """
    def build() -> dict[str, torch.Tensor | None]:
        out = {}
        for name, (make, fixed) in _recipes(module)[path].items():
            t = make()
            out[name] = None if t is None else t.to(device=device, dtype=fixed or dtype).contiguous()
        return out

    if not use_cache:
        return build()
    store = module.__dict__.setdefault(_CACHE_ATTR, {})
    key, version = (path, dtype, str(device)), _version(module)
    hit = store.get(key)
    if hit is not None and hit[0] == version:
        return hit[1]
    with torch.no_grad():
        out = build()
    store[key] = (version, out)
    return out


def taps(module: nn.Module) -> torch.Tensor:
    """(k_h * k_w, M): tap ``i * k_w + j`` of middle channel m is ``f_h[m, i] * f_w[m, j]``."""
    kh, kw = module.kernel_size
    fh, fw = module.spatial_filters("h"), module.spatial_filters("w")
    ref = module.a_in
    fh = torch.ones(module.width, 1, dtype=ref.dtype, device=ref.device) if fh is None else fh
    fw = torch.ones(module.width, 1, dtype=ref.dtype, device=ref.device) if fw is None else fw
    return (fh[:, :, None] * fw[:, None, :]).reshape(module.width, kh * kw).T


def w_in(module: nn.Module) -> torch.Tensor:
    """(I, M): L1 as a right-hand GEMM operand."""
    return module.in_weight().reshape(module.width, module.in_channels).T


def w_out(module: nn.Module) -> torch.Tensor:
    """(M, O): L4 as a right-hand GEMM operand."""
    return module.out_weight().reshape(module.out_channels, module.width).T


def w_taps(module: nn.Module) -> torch.Tensor:
    """(k_h * k_w, I, M): L1 scaled by each tap (the implicit-GEMM weight of the one-kernel path)."""
    return w_in(module)[None] * taps(module)[:, None, :]


def w_merged(module: nn.Module) -> torch.Tensor:
    """(M, I, k_h, k_w): L1, L2 and L3 as one conv weight (row m is W1[m] times m's separable filter)."""
    kh, kw = module.kernel_size
    return w_in(module).T[:, :, None, None] * taps(module).T.reshape(module.width, 1, kh, kw)


def w_full(module: nn.Module) -> torch.Tensor:
    """(O, I, k_h, k_w): the kernel the factors stand for, kept differentiable (``decomposition()`` detaches)."""
    from kcp.decomposition import Decomposition

    return Decomposition(module.method, module.kernel_shape, dict(module.ranks), module.factors(),
                         module.factor_shape).reconstruct()

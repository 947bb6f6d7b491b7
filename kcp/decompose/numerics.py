"""The numerical building blocks: the only module that calls TensorLy.

Everything runs in float64 on the CPU (kernels are at most a few million entries). TensorLy's
``init='svd'`` is never used: when the rank exceeds a mode's size it takes a full SVD of an
unfolding, which for a 512x512x3x3 kernel is terabytes. Our own initialisation takes the leading
eigenvectors of each unfolding's small Gram matrix instead and pads with random columns.
"""

from __future__ import annotations

import math

import numpy as np
import torch

# TensorLy's overhead per call dominates on small tensors, where its numpy backend is ~20x faster
# than its pytorch one; on large ones the pytorch backend with the einsum MTTKRP (opt_einsum picks a
# memory-lean order) is the one that neither crawls nor forms the Khatri-Rao product in full.
_SMALL_WORK = 2_000_000


def rng_for(random_state: int | np.random.Generator | None) -> np.random.Generator:
    """A numpy Generator from a seed (None means 0: results are deterministic by default)."""
    if isinstance(random_state, np.random.Generator):
        return random_state
    return np.random.default_rng(0 if random_state is None else random_state)


def randn(rng: np.random.Generator, *shape: int) -> torch.Tensor:
    return torch.from_numpy(rng.standard_normal(shape))


def leading_vectors(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``rank`` left singular vectors and values of ``matrix`` via the eigh of its row Gram."""
    vals, vecs = torch.linalg.eigh(matrix @ matrix.T)
    order = torch.argsort(vals, descending=True)[:rank]
    return vecs[:, order], vals[order].clamp_min(0).sqrt()


def truncated_svd(matrix: torch.Tensor, rank: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U sqrt(s), V sqrt(s))`` of the best rank-``rank`` approximation ``U diag(s) V^T``.

    Past the matrix's own rank the extra columns are tiny random vectors, not zeros, so that a
    later joint refinement can still put them to use.
    """
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    k = min(rank, s.numel())
    left, right = u[:, :k] * s[:k].sqrt(), vh[:k].T * s[:k].sqrt()
    if rank > k:
        scale = 1e-6 * (float(s[0]) if s.numel() else 1.0) ** 0.5 + 1e-30
        left = torch.cat([left, scale * randn(rng, matrix.shape[0], rank - k)], 1)
        right = torch.cat([right, scale * randn(rng, matrix.shape[1], rank - k)], 1)
    return left, right


def unfold(tensor: torch.Tensor, mode: int) -> torch.Tensor:
    return tensor.movedim(mode, 0).reshape(tensor.shape[mode], -1)


def cp_init(tensor: torch.Tensor, rank: int, rng: np.random.Generator) -> list[torch.Tensor]:
    """Leading singular vectors of every unfolding (via its n x n Gram), padded with random columns."""
    factors = []
    for mode, size in enumerate(tensor.shape):
        vecs, vals = leading_vectors(unfold(tensor, mode), min(rank, size))
        if mode == 0:
            vecs = vecs * vals
        if rank > size:
            vecs = torch.cat([vecs, randn(rng, size, rank - size) / math.sqrt(size)], 1)
        factors.append(vecs)
    return factors


def cp_als(
    tensor: torch.Tensor,
    rank: int,
    *,
    n_iter_max: int = 100,
    tol: float = 1e-8,
    random_state: int | np.random.Generator | None = 0,
) -> tuple[list[torch.Tensor], list[float]]:
    """CP-ALS (TensorLy ``parafac``) from :func:`cp_init`; returns factors (weights folded in) and errors."""
    import tensorly as tl  # imported here so that running factorised modules (e.g. on a GPU box) needs no TensorLy
    from tensorly.cp_tensor import CPTensor
    from tensorly.decomposition import parafac

    rng = rng_for(random_state)
    init = cp_init(tensor, rank, rng)
    seed = int(rng.integers(2**31 - 1))
    options = dict(n_iter_max=n_iter_max, tol=tol, random_state=seed, return_errors=True, normalize_factors=False)
    if tensor.numel() * rank <= _SMALL_WORK:
        with tl.backend_context("numpy", local_threadsafe=True):
            cp, errors = parafac(tensor.numpy(), rank, init=CPTensor((np.ones(rank), [f.numpy() for f in init])),
                                 **options)
        weights, factors = torch.from_numpy(np.asarray(cp[0])), [torch.from_numpy(np.array(f)) for f in cp[1]]
    else:
        with tl.backend_context("pytorch", local_threadsafe=True), \
                tl.tenalg.backend_context("einsum", local_threadsafe=True):
            cp, errors = parafac(tensor, rank, init=CPTensor((torch.ones(rank, dtype=tensor.dtype), init)), **options)
        weights, factors = cp[0], [f.clone() for f in cp[1]]
    factors[0] = factors[0] * weights
    return factors, [float(e) for e in errors]


def cp_decompose(
    tensor: torch.Tensor,
    rank: int,
    rng: np.random.Generator,
    *,
    n_iter_max: int = 30,
    tol: float = 1e-6,
) -> list[torch.Tensor]:
    """Rank-``rank`` CP of a tensor as one (n, rank) matrix per mode; size-1 modes get ones.

    Up to two non-trivial modes make a matrix, whose truncated SVD is optimal; more go to CP-ALS.
    A tensor with no non-trivial mode is a scalar, held by the first mode as ``rank`` equal parts.
    """
    dims = tuple(tensor.shape)
    free = [m for m, d in enumerate(dims) if d > 1]
    out = [torch.ones(1, rank, dtype=tensor.dtype) for _ in dims]
    if len(free) == 0:
        out[0] = torch.full((1, rank), float(tensor.reshape(())) / rank, dtype=tensor.dtype)
    elif len(free) == 1:
        vec = tensor.reshape(-1, 1)
        tiny = 1e-6 * (float(vec.norm()) + 1e-30) / vec.shape[0] ** 0.5
        out[free[0]] = torch.cat([vec, tiny * randn(rng, vec.shape[0], rank - 1)], 1)
    elif len(free) == 2:
        out[free[0]], out[free[1]] = truncated_svd(tensor.reshape(dims[free[0]], dims[free[1]]), rank, rng)
    else:
        factors, _ = cp_als(tensor.reshape([dims[m] for m in free]), rank, n_iter_max=n_iter_max, tol=tol,
                            random_state=rng)
        for m, f in zip(free, factors):
            out[m] = f
    return out


def tucker2(
    tensor: torch.Tensor, out_rank: int, in_rank: int, *, n_iter_max: int = 20, tol: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tucker over the two channel modes (TensorLy ``partial_tucker``, HOOI from an SVD start).

    Returns ``(core, u_out, u_in)`` with ``W ~ core x_0 u_out x_1 u_in``.
    """
    import tensorly as tl
    from tensorly.decomposition import partial_tucker

    with tl.backend_context("pytorch", local_threadsafe=True):
        (core, factors), _ = partial_tucker(
            tensor, rank=[out_rank, in_rank], modes=[0, 1], n_iter_max=n_iter_max, init="svd", tol=tol,
        )
    return core.clone(), factors[0].clone(), factors[1].clone()


def relative_error(approx: torch.Tensor, reference: torch.Tensor) -> float:
    """``||approx - reference||_F / ||reference||_F`` (0 for two zero tensors)."""
    ref = float(reference.norm())
    diff = float((approx - reference).norm())
    if ref == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / ref

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

from kcp.decomposition.stopping import EXACT, WINDOW, window_change

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


def truncated_svd(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U sqrt(s), V sqrt(s))`` of the best rank-``rank`` approximation ``U diag(s) V^T`` (rank <= min size)."""
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, vh[:rank].T * root


def cp_init(tensors: torch.Tensor, rank: int, rng: np.random.Generator) -> list[torch.Tensor]:
    """A start for rank-``rank`` CP of each of R same-shape tensors (R, n_0, n_1, ...): one (R, n_m, rank)
    stack per mode, the leading left singular vectors of each unfolding (from its small n_m x n_m Gram), padded
    with random columns where ``rank`` exceeds n_m. The first mode carries the singular values, so the start is
    on the tensors' scale."""
    r = tensors.shape[0]
    rms = float(tensors.norm()) / math.sqrt(max(tensors.numel(), 1)) + 1e-30
    factors = []
    for mode, size in enumerate(tensors.shape[1:]):
        unfolded = tensors.movedim(mode + 1, 1).reshape(r, size, -1)
        vals, vecs = torch.linalg.eigh(unfolded @ unfolded.transpose(1, 2))
        keep = min(rank, size)
        vecs = vecs.flip(-1)[..., :keep]
        pad = randn(rng, r, size, rank - keep) / math.sqrt(size)
        if mode == 0:
            vecs, pad = vecs * vals.flip(-1)[..., :keep].clamp_min(0).sqrt().unsqueeze(1), pad * rms
        factors.append(torch.cat([vecs, pad], 2))
    return factors


def cp_als(
    tensor: torch.Tensor,
    rank: int,
    *,
    n_iter_max: int = 100,
    tol: float = 1e-8,
    window: int = WINDOW,
    random_state: int | np.random.Generator | None = 0,
) -> tuple[list[torch.Tensor], list[float]]:
    """CP-ALS (TensorLy ``parafac``) from :func:`cp_init`; returns factors (weights folded in) and the relative
    error after the start and every iteration.

    Stops after ``n_iter_max`` iterations, or once the last ``window`` iterations together lowered the error by
    less than ``tol`` (relative; :mod:`kcp.decomposition.stopping`), through TensorLy's callback.
    """
    import tensorly as tl  # imported here so that running factorised modules (e.g. on a GPU box) needs no TensorLy
    from tensorly.cp_tensor import CPTensor
    from tensorly.decomposition import parafac

    rng = rng_for(random_state)
    init = [f[0] for f in cp_init(tensor.unsqueeze(0), rank, rng)]
    seed = int(rng.integers(2**31 - 1))
    errors: list[float] = []

    def stop(_cp, error) -> bool:
        errors.append(float(error))
        return errors[-1] < EXACT or window_change(errors, window) <= tol

    # TensorLy's own rule (one iteration's decrease below its tol) is left only the case of no decrease at all;
    # a positive tol is also what makes it compute the error that the callback receives.
    options = dict(n_iter_max=n_iter_max, tol=1e-300, random_state=seed, normalize_factors=False, callback=stop)
    if tensor.numel() * rank <= _SMALL_WORK:
        with tl.backend_context("numpy", local_threadsafe=True):
            cp = parafac(tensor.numpy(), rank, init=CPTensor((np.ones(rank), [f.numpy() for f in init])), **options)
        weights, factors = torch.from_numpy(np.asarray(cp[0])), [torch.from_numpy(np.array(f)) for f in cp[1]]
    else:
        with tl.backend_context("pytorch", local_threadsafe=True), \
                tl.tenalg.backend_context("einsum", local_threadsafe=True):
            cp = parafac(tensor, rank, init=CPTensor((torch.ones(rank, dtype=tensor.dtype), init)), **options)
        weights, factors = cp[0], [f.clone() for f in cp[1]]
    factors[0] = factors[0] * weights
    return factors, errors


def tucker2(
    tensor: torch.Tensor, out_rank: int, in_rank: int, *, n_iter_max: int = 100, tol: float = 1e-9
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[float]]:
    """Tucker over the two channel modes (TensorLy ``partial_tucker``, HOOI from an SVD start, which stops once an
    iteration changes the relative error by less than ``tol``).

    Returns ``(core, u_out, u_in, errors)`` with ``W ~ core x_0 u_out x_1 u_in`` and the relative error after
    every iteration.
    """
    import tensorly as tl
    from tensorly.decomposition import partial_tucker

    with tl.backend_context("pytorch", local_threadsafe=True):
        (core, factors), errors = partial_tucker(
            tensor, rank=[out_rank, in_rank], modes=[0, 1], n_iter_max=n_iter_max, init="svd", tol=tol,
        )
    return core.clone(), factors[0].clone(), factors[1].clone(), [float(e) for e in errors]


def relative_error(approx: torch.Tensor, reference: torch.Tensor) -> float:
    """``||approx - reference||_F / ||reference||_F`` (0 for two zero tensors)."""
    ref = float(reference.norm())
    diff = float((approx - reference).norm())
    if ref == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / ref

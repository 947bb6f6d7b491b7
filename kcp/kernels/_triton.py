"""The Triton kernels behind the fused paths (imported lazily: importing this module imports Triton).

Both kernels compute ``y[n, o, q] = bias[o] + sum_m W4[m, o] * mid[n, q, m]`` for a tile of output pixels
``q``, where ``mid`` is the output of the two depthwise stages:
``mid[q, m] = sum_{i,j} taps[i*KW + j, m] * z[shift_ij(q), m]`` with ``taps[i*KW + j, m] = f_h[m, i] f_w[m, j]``
(the k_h x 1 and 1 x k_w filters of one middle channel multiply into one separable k_h x k_w filter).
They differ in where ``z = W1 x`` comes from:

- ``spatial_out_kernel`` reads a precomputed ``z`` (N, H, W, M), written once by one GEMM;
- ``all_stages_kernel`` never materialises ``z``: each tap multiplies the shifted input tile by
  ``W1 * taps[t]`` (an implicit-GEMM k_h x k_w conv to the middle width), so x is the only thing read.

``O_INNER``: the whole middle width fits one block, so a program computes ``mid`` once and loops over all
output channels in blocks of ``BLOCK_O`` (small accumulators, many resident programs per SM to hide memory
latency). Otherwise each program owns one output-channel block and loops over middle-channel blocks.

Zero padding is the load mask; stride and dilation are in the tap offsets. ``DOT_F32`` casts both dot
operands to fp32 (fp32 inputs, and Triton's interpreter, whose ``tl.dot`` misreads bf16 bit patterns);
otherwise the dot runs in the input dtype with fp32 accumulation. ``PREC`` is the fp32 dot precision.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _dot(a, b, acc, DOT_F32: tl.constexpr, PREC: tl.constexpr):
    if DOT_F32:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision=PREC)
    else:
        out = tl.dot(a, b, acc)
    return out


@triton.jit
def _tap(t, ho, wo, q_ok, H, W, stride_h, stride_w, pad_t, pad_l, dil_h, dil_w, KW: tl.constexpr):
    """Input row, column and in-bounds mask of tap ``t`` (zero padding = masked out) for every output pixel."""
    i = t // KW
    hi = ho * stride_h - pad_t + i * dil_h
    wi = wo * stride_w - pad_l + (t - i * KW) * dil_w
    return hi, wi, q_ok & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)


@triton.jit
def _mid_from_z(z_img, taps_ptr, m, m_ok, ho, wo, q_ok, H, W, M, stride_h, stride_w, pad_t, pad_l, dil_h, dil_w,
                KH: tl.constexpr, KW: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_M: tl.constexpr):
    mid = tl.zeros((BLOCK_P, BLOCK_M), dtype=tl.float32)
    # A loop, not an unrolled one: unrolled, all k_h k_w tile loads go live at once and spill.
    for t in range(KH * KW):
        hi, wi, ok = _tap(t, ho, wo, q_ok, H, W, stride_h, stride_w, pad_t, pad_l, dil_h, dil_w, KW)
        f = tl.load(taps_ptr + t * M + m, mask=m_ok, other=0.0)
        v = tl.load(z_img + ((hi * W + wi) * M)[:, None] + m[None, :], mask=ok[:, None] & m_ok[None, :], other=0.0)
        mid += v.to(tl.float32) * f[None, :]
    return mid


@triton.jit
def _mid_from_x(x_img, w_taps_ptr, m, m_ok, ho, wo, q_ok, C, H, W, M, stride_h, stride_w, pad_t, pad_l, dil_h, dil_w,
                sx_c, sx_h, sx_w, KH: tl.constexpr, KW: tl.constexpr, BLOCK_P: tl.constexpr,
                BLOCK_I: tl.constexpr, BLOCK_M: tl.constexpr, DOT_F32: tl.constexpr, PREC: tl.constexpr):
    mid = tl.zeros((BLOCK_P, BLOCK_M), dtype=tl.float32)
    # One flat loop over (tap, input-channel block), as an implicit-GEMM conv: a single pipelined K loop.
    n_c = tl.cdiv(C, BLOCK_I)
    for s in range(KH * KW * n_c):
        t = s // n_c
        c = (s - t * n_c) * BLOCK_I + tl.arange(0, BLOCK_I)
        c_ok = c < C
        hi, wi, ok = _tap(t, ho, wo, q_ok, H, W, stride_h, stride_w, pad_t, pad_l, dil_h, dil_w, KW)
        xv = tl.load(x_img + (hi * sx_h + wi * sx_w)[:, None] + c[None, :] * sx_c, mask=ok[:, None] & c_ok[None, :],
                     other=0.0)
        wv = tl.load(w_taps_ptr + (t * C + c)[:, None] * M + m[None, :], mask=c_ok[:, None] & m_ok[None, :],
                     other=0.0)
        mid = _dot(xv, wv, mid, DOT_F32, PREC)
    return mid


@triton.jit
def _out_block(mid, w_out_ptr, b_ptr, y_ptr, n, q, q_ok, m, m_ok, o0, M, CO, sy_n, sy_q, sy_c,
               BLOCK_P: tl.constexpr, BLOCK_O: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_F32: tl.constexpr,
               PREC: tl.constexpr):
    """L4 + bias for output channels ``o0 .. o0 + BLOCK_O`` from a whole-width ``mid`` tile, stored."""
    o = o0 + tl.arange(0, BLOCK_O)
    o_ok = o < CO
    w = tl.load(w_out_ptr + m[:, None] * CO + o[None, :], mask=m_ok[:, None] & o_ok[None, :], other=0.0)
    acc = _dot(mid, w, tl.zeros((BLOCK_P, BLOCK_O), dtype=tl.float32), DOT_F32, PREC)
    _store(acc, y_ptr, b_ptr, n, q, q_ok, o, o_ok, sy_n, sy_q, sy_c, HAS_BIAS)


@triton.jit
def _store(acc, y_ptr, b_ptr, n, q, q_ok, o, o_ok, sy_n, sy_q, sy_c, HAS_BIAS: tl.constexpr):
    if HAS_BIAS:
        acc += tl.load(b_ptr + o, mask=o_ok, other=0.0)[None, :]
    # sy_q is 1 (NCHW) or C_out (channels_last): the pixel-in-image index addresses both layouts.
    ptrs = y_ptr + n * sy_n + q[:, None] * sy_q + o[None, :] * sy_c
    tl.store(ptrs, acc.to(y_ptr.dtype.element_ty), mask=q_ok[:, None] & o_ok[None, :])


# Image sizes and geometry are not specialised (one compile serves many layers and batches); channel counts
# and strides stay specialised: their divisibility lets Triton vectorise the channel-contiguous accesses.
_GEOMETRY_ARGS = ["H", "W", "HO", "WO", "stride_h", "stride_w", "pad_t", "pad_l", "dil_h", "dil_w"]


@triton.jit(do_not_specialize=_GEOMETRY_ARGS)
def spatial_out_kernel(
    z_ptr, taps_ptr, w_out_ptr, b_ptr, y_ptr,
    H, W, HO, WO, M, CO,
    stride_h, stride_w, pad_t, pad_l, dil_h, dil_w,
    sy_n, sy_q, sy_c,
    KH: tl.constexpr, KW: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_O: tl.constexpr,
    O_INNER: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_F32: tl.constexpr, PREC: tl.constexpr,
):
    """L2 + L3 + L4 (+ bias) on ``z = W1 x`` stored as (N, H, W, M); grid (O blocks, pixel tiles, images)."""
    pid_o, pid_q, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    q = pid_q * BLOCK_P + tl.arange(0, BLOCK_P)
    q_ok = q < HO * WO
    ho, wo = q // WO, q % WO
    z_img = z_ptr + n * H * W * M
    dt = z_ptr.dtype.element_ty
    if O_INNER:
        m = tl.arange(0, BLOCK_M)
        m_ok = m < M
        # Rounded to the input dtype before L4, as the unfused chain stores it.
        mid = _mid_from_z(z_img, taps_ptr, m, m_ok, ho, wo, q_ok, H, W, M, stride_h, stride_w, pad_t, pad_l,
                          dil_h, dil_w, KH, KW, BLOCK_P, BLOCK_M).to(dt)
        for o0 in range(0, CO, BLOCK_O):
            _out_block(mid, w_out_ptr, b_ptr, y_ptr, n, q, q_ok, m, m_ok, o0, M, CO, sy_n, sy_q, sy_c,
                       BLOCK_P, BLOCK_O, HAS_BIAS, DOT_F32, PREC)
    else:
        o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
        o_ok = o < CO
        acc = tl.zeros((BLOCK_P, BLOCK_O), dtype=tl.float32)
        for m0 in range(0, M, BLOCK_M):
            m = m0 + tl.arange(0, BLOCK_M)
            m_ok = m < M
            mid = _mid_from_z(z_img, taps_ptr, m, m_ok, ho, wo, q_ok, H, W, M, stride_h, stride_w, pad_t, pad_l,
                              dil_h, dil_w, KH, KW, BLOCK_P, BLOCK_M).to(dt)
            w = tl.load(w_out_ptr + m[:, None] * CO + o[None, :], mask=m_ok[:, None] & o_ok[None, :], other=0.0)
            acc = _dot(mid, w, acc, DOT_F32, PREC)
        _store(acc, y_ptr, b_ptr, n, q, q_ok, o, o_ok, sy_n, sy_q, sy_c, HAS_BIAS)


@triton.jit(do_not_specialize=_GEOMETRY_ARGS)
def all_stages_kernel(
    x_ptr, w_taps_ptr, w_out_ptr, b_ptr, y_ptr,
    C, H, W, HO, WO, M, CO,
    stride_h, stride_w, pad_t, pad_l, dil_h, dil_w,
    sx_n, sx_c, sx_h, sx_w, sy_n, sy_q, sy_c,
    KH: tl.constexpr, KW: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_O: tl.constexpr, O_INNER: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_F32: tl.constexpr,
    PREC: tl.constexpr,
):
    """L1 + L2 + L3 + L4 (+ bias) from x itself; ``w_taps`` is (KH*KW, C_in, M): W1^T scaled by each tap."""
    pid_o, pid_q, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    q = pid_q * BLOCK_P + tl.arange(0, BLOCK_P)
    q_ok = q < HO * WO
    ho, wo = q // WO, q % WO
    x_img = x_ptr + n * sx_n
    dt = x_ptr.dtype.element_ty
    if O_INNER:
        m = tl.arange(0, BLOCK_M)
        m_ok = m < M
        mid = _mid_from_x(x_img, w_taps_ptr, m, m_ok, ho, wo, q_ok, C, H, W, M, stride_h, stride_w, pad_t, pad_l,
                          dil_h, dil_w, sx_c, sx_h, sx_w, KH, KW, BLOCK_P, BLOCK_I, BLOCK_M, DOT_F32, PREC).to(dt)
        for o0 in range(0, CO, BLOCK_O):
            _out_block(mid, w_out_ptr, b_ptr, y_ptr, n, q, q_ok, m, m_ok, o0, M, CO, sy_n, sy_q, sy_c,
                       BLOCK_P, BLOCK_O, HAS_BIAS, DOT_F32, PREC)
    else:
        o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
        o_ok = o < CO
        acc = tl.zeros((BLOCK_P, BLOCK_O), dtype=tl.float32)
        for m0 in range(0, M, BLOCK_M):
            m = m0 + tl.arange(0, BLOCK_M)
            m_ok = m < M
            mid = _mid_from_x(x_img, w_taps_ptr, m, m_ok, ho, wo, q_ok, C, H, W, M, stride_h, stride_w, pad_t,
                              pad_l, dil_h, dil_w, sx_c, sx_h, sx_w, KH, KW, BLOCK_P, BLOCK_I, BLOCK_M, DOT_F32,
                              PREC).to(dt)
            w = tl.load(w_out_ptr + m[:, None] * CO + o[None, :], mask=m_ok[:, None] & o_ok[None, :], other=0.0)
            acc = _dot(mid, w, acc, DOT_F32, PREC)
        _store(acc, y_ptr, b_ptr, n, q, q_ok, o, o_ok, sy_n, sy_q, sy_c, HAS_BIAS)


def interpreted() -> bool:
    """True when Triton runs these kernels in its CPU interpreter (``TRITON_INTERPRET=1`` at import)."""
    return type(spatial_out_kernel).__name__ == "InterpretedFunction"

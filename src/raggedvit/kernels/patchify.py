"""Triton kernel: the patch matrix of a non-overlapping patch embedding, ``(B * GH * GW, C * PH * PW)``, from
images ``(B, C, H, W)`` in one pass.

Row ``(b, gh, gw)`` of the output is the patch at grid position ``(gh, gw)`` flattened in ``(c, i, k)`` order,
the order of a ``Conv2d`` kernel flattened by ``weight.reshape(out_channels, -1)``. One program per
``(b, gh)`` band of patches walks its ``GW * C * PH`` pixel runs of ``PW`` elements (one run = one
image row inside one patch) in blocks of ``BLOCK_R`` runs: each run is ``PW`` contiguous elements of the
output and, for images with unit stride along W, of the input. Any image strides (specialized on, so that
unit and 16-divisible strides give vector loads); any dtype.
"""

import triton
import triton.language as tl


@triton.jit
def patchify_fwd(
    IMG,
    OUT,
    stride_b,
    stride_c,
    stride_h,
    stride_w,
    C: tl.constexpr,
    PH: tl.constexpr,
    PW: tl.constexpr,
    GH: tl.constexpr,
    GW: tl.constexpr,
    PW_P: tl.constexpr,  # PW rounded up to a power of two
    BLOCK_R: tl.constexpr,
):
    band = tl.program_id(0).to(tl.int64)  # b * GH + gh
    b = band // GH
    gh = band % GH
    K: tl.constexpr = C * PH * PW
    RUNS: tl.constexpr = GW * C * PH
    ks = tl.arange(0, PW_P)
    src = IMG + b * stride_b + gh * PH * stride_h
    dst = OUT + band * GW * K
    for r0 in range(0, RUNS, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)  # run (gw, c, i): gw slowest, i fastest
        gw = r // (C * PH)
        c = (r // PH) % C
        i = r % PH
        in_off = c.to(tl.int64) * stride_c + i.to(tl.int64) * stride_h + (gw * PW).to(tl.int64) * stride_w
        out_off = gw * K + (c * PH + i) * PW
        mask = (r < RUNS)[:, None] & (ks < PW)[None, :]
        v = tl.load(src + in_off[:, None] + ks[None, :].to(tl.int64) * stride_w, mask=mask)
        tl.store(dst + out_off[:, None] + ks[None, :], v, mask=mask)

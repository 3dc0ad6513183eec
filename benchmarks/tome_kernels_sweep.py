"""Launch-configuration sweep of ToMe's three merge kernels (:mod:`raggedvit.kernels.tome`) on the GPU, each
timed alone in a CUDA graph (``triton.testing.do_bench_cudagraph``), at ViT-Tiny shapes (D = 64 matching
features, C = 192 tokens) and the dense widths of a ToMe r=4 forward (L = 197 and 149).

Why: in ``profile-forward-tome-nvidia-h200-20261130.log`` the matching kernel takes 70 us per block at batch 64
(846 of 2,423 us per forward) for about 1.2 MFLOP per image. Variants: tile sizes and warps, the dot's
``input_precision`` (``ieee``, ``tf32``, ``tf32x3``: the match kernel ships ``tf32x3`` since this sweep's first
run), and ``nonorm`` (the B rows' normalisation removed from the inner loop: what hoisting it would save).
Variants are the shipped source with those edits, written to a temporary module; each at both schedules
(``split``: one program per chunk of B columns / of channels, as ``ops.tome`` launches below
``SPLIT_BELOW_BATCH``; else one program walks them all). Also the whole ``tome_merge`` and the torch reference
``bipartite_merge``.
Usage: ``PYTHONPATH=src python benchmarks/tome_kernels_sweep.py [--batches 1,64,256] [--precisions ieee,tf32,tf32x3]
[--out DIR]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import tempfile
from pathlib import Path

import torch
import triton
from triton.testing import do_bench_cudagraph

from raggedvit.kernels import tome as shipped
from raggedvit.ops import tome as ops_tome
from raggedvit.ops.tome import tome_merge
from raggedvit.pruning.tome import bipartite_merge
from raggedvit.runtime.device import environment


def shipped_config(batch: int) -> dict:
    """ops.tome's configuration at ``batch`` (metric width <= 64), in the sweep's row keys."""
    t = ops_tome._BIG if batch >= ops_tome._BIG_BATCH else ops_tome._SMALL
    split = batch < ops_tome.SPLIT_BELOW_BATCH
    return {"match": dict(precision="tf32x3", nonorm=False, block_m=t["block_m"], block_j=ops_tome._BLOCK_J,
                          warps=t["match_warps"], split=split),
            "decide": dict(warps=4),
            "apply": dict(precision="ieee", block_p=t["block_p"], block_i=t["block_i"], block_c=64,
                          warps=t["apply_warps"], split=split)}


NORM_LINE = "        mb = mb / tl.sqrt(tl.sum(mb * mb, axis=1))[:, None]\n"


def variant(precision: str, nonorm: bool):
    """The shipped kernels module with the dots' precision (and the B-row normalisation) edited."""
    src = Path(shipped.__file__).read_text()
    for shipped_precision in ('input_precision="ieee"', 'input_precision="tf32x3"'):
        src = src.replace(shipped_precision, f'input_precision="{precision}"')
    if nonorm:
        assert NORM_LINE in src
        src = src.replace(NORM_LINE, "")
    path = Path(tempfile.mkdtemp()) / f"tome_{precision}_{int(nonorm)}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def us(fn) -> float | None:
    try:
        fn()
        torch.cuda.synchronize()
        return do_bench_cudagraph(fn, rep=40) * 1e3
    except Exception as e:  # noqa: BLE001 - OutOfResources and friends: the config does not fit
        print(f"    skipped: {type(e).__name__}: {str(e)[:80]}")
        return None


def sweep_shape(B: int, L: int, mods: dict, rows: list, dev: torch.device, gen: torch.Generator) -> None:
    """Time every variant at batch ``B`` and dense width ``L``; append rows and print the fastest."""
    D, C, P, r = 64, 192, 1, 4
    metric = torch.randn(B, L, D, device=dev, generator=gen)
    x = torch.randn(B, L, C, device=dev, generator=gen, dtype=torch.float16)
    LA = (L + 1) // 2
    lda = max(16, 1 << (LA - 1).bit_length())
    LB = L // 2
    node_max = torch.empty(B, -(-LB // 16), lda, device=dev)  # room for the most slots (16 columns each)
    best_j = torch.empty(B, -(-LB // 16), lda, device=dev, dtype=torch.int32)
    dst = torch.empty(B, lda, device=dev, dtype=torch.int32)
    index = torch.empty(B, L, device=dev, dtype=torch.int64)
    count = torch.empty(B, device=dev, dtype=torch.int64)
    values = torch.empty_like(x)
    new_size = torch.empty(B, L, device=dev)
    shape = dict(batch=B, L=L)
    t_whole = us(lambda: tome_merge(metric, x, None, None, P, r=r))
    t_ref = us(lambda: bipartite_merge(metric, x, None, None, P, width=L, fresh=True, r=r))
    rows.append(dict(**shape, kernel="tome_merge (shipped, 3 kernels)", us=t_whole))
    rows.append(dict(**shape, kernel="bipartite_merge (torch reference)", us=t_ref))
    print(f"B={B} L={L}: tome_merge {t_whole:.1f} us, bipartite_merge {t_ref:.1f} us", flush=True)
    # the shipped outputs, for agreement
    tome_merge(metric, x, None, None, P, r=r)
    whole_span = 32 * -(-LB // 32)
    shipped.tome_match_fwd[(B, triton.cdiv(LA, 16), 1)](metric, count, node_max, best_j, L, P, metric.stride(0),
                                                        metric.stride(1), 0, whole_span, D, 1, False, lda, 16, 64,
                                                        32, num_warps=4)
    # one slot: the kernel's (B, 1, LDA) layout is the first B * LDA entries of the scratch
    ref_max = node_max.view(-1)[:B * lda].view(B, lda).clone()
    ref_j = best_j.view(-1)[:B * lda].view(B, lda).clone()
    for (prec, nonorm), mod in mods.items():
        for bm, bj, w, split in itertools.product((16, 32, 64, 128), (32, 64, 128), (4, 8), (False, True)):
            if bm * bj > 128 * 64 and prec == "ieee":
                continue
            slots = -(-LB // bj) if split else 1
            node_max.fill_(float("nan"))

            def run(mod=mod, bm=bm, bj=bj, w=w, slots=slots, split=split):
                mod.tome_match_fwd[(B, triton.cdiv(LA, bm), slots)](
                    metric, count, node_max, best_j, L, P, metric.stride(0), metric.stride(1), 0,
                    bj if split else bj * -(-LB // bj), D, 1, False, lda, bm, 64, bj, num_warps=w)
            t = us(run)
            if t is None:
                continue
            nm = node_max.view(-1)[:B * slots * lda].view(B, slots, lda)[:, :, :LA]  # the kernel's (B, S, LDA)
            got_max = nm.max(1).values
            pick = nm.argmax(1, keepdim=True)  # the first slot holding the max
            got_j = best_j.view(-1)[:B * slots * lda].view(B, slots, lda)[:, :, :LA].gather(1, pick)[:, 0]
            same_j = (got_j == ref_j[:, :LA]).float().mean().item()
            err = (got_max - ref_max[:, :LA]).abs().nan_to_num(0).max().item()
            rows.append(dict(**shape, kernel="match", precision=prec, nonorm=nonorm, block_m=bm, block_j=bj,
                             warps=w, split=split, us=t, same_best_j=same_j, max_err=err))
    for w in (1, 2, 4, 8):
        def run(w=w):
            shipped.tome_decide_fwd[(B,)](count, ref_max, ref_j, dst, index, count, L, P, r, r, 0, 0.0, 1, False,
                                          False, lda, 32, num_warps=w)
        rows.append(dict(**shape, kernel="decide", warps=w, us=us(run)))
    for (prec, nonorm), mod in mods.items():
        if nonorm:
            continue
        for bp, bi, bc, w, split in itertools.product((8, 16, 32), (16, 32, 64), (64,), (2, 4), (False, True)):
            def run(mod=mod, bp=bp, bi=bi, bc=bc, w=w, split=split):
                span = bc if split else bc * -(-C // bc)
                mod.tome_apply_fwd[(B, triton.cdiv(LA, bp), -(-C // span))](
                    x, x, dst, values, new_size, L, x.stride(0), x.stride(1), 0, values.stride(0),
                    values.stride(1), span, C, False, lda, bp, bi, bc, num_warps=w)
            rows.append(dict(**shape, kernel="apply", precision=prec, block_p=bp, block_i=bi, block_c=bc,
                             warps=w, split=split, us=us(run)))
    for k in ("match", "decide", "apply"):
        got = [x_ for x_ in rows if x_["kernel"] == k and x_.get("batch") == B and x_.get("L") == L
               and x_["us"] is not None]
        got.sort(key=lambda x_: x_["us"])
        for g in got[:4]:
            print(f"  {k:6s} {g['us']:7.1f} us  {dict((a, b) for a, b in g.items() if a not in shape)}")
        cur = [g for g in got if all(g.get(a) == v for a, v in shipped_config(B)[k].items())]
        if cur:
            print(f"  {k:6s} {cur[0]['us']:7.1f} us  (shipped config)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,64,256")
    ap.add_argument("--precisions", default="ieee,tf32,tf32x3", help="dot precisions of the variants")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    mods = {(p, n): variant(p, n) for p in args.precisions.split(",") for n in (False, True)}
    rows = []
    shapes = [(int(b), L) for b in args.batches.split(",") for L in ((197, 149) if b == "64" else (197,))]
    for B, L in shapes:
        sweep_shape(B, L, mods, rows, dev, gen)
    env = environment(dev)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"tome-kernels-sweep-{env['gpu'].lower().replace(' ', '-')}.json"
    path.write_text(json.dumps(dict(env=env, rows=rows), indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

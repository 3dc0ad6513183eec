"""A/B of ToMe's merge on the GPU: the three-kernel merge (:func:`raggedvit.ops.tome.tome_merge`) against the
torch reference ops (:func:`raggedvit.pruning.tome.bipartite_merge`, ``MERGE_KERNEL = False``): CUDA-graph
replay time of the packed pipeline (raggedvit's graph), kernels per forward, and agreement of the two (logits,
kept counts), for the trained ViT-Tiny on real photos (fp16). Usage:
``PYTHONPATH=src python benchmarks/tome_ab.py [--batches 1,8,64,256] [--settings 0,1] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from live_rows_ab import kernels_per_replay

import raggedvit
from raggedvit import sample_data
from raggedvit.bench.timing import graph_replay_us
from raggedvit.models.graph import capture
from raggedvit.pruning import tome as tome_mod
from raggedvit.runtime.device import environment

SETTINGS = [dict(variant="fixed", r=4), dict(variant="fixed", r=8), dict(variant="adaptive")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,8,64,256")
    ap.add_argument("--settings", default=",".join(map(str, range(len(SETTINGS)))),
                    help="indices into SETTINGS, comma-separated")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    dev = torch.device("cuda")
    model = sample_data.load_model().to(dev, torch.float16).eval()
    images, _ = sample_data.load_images(model, range(256))
    images = images.to(dev, torch.float16)
    rows = []
    for opts in [SETTINGS[int(i)] for i in args.settings.split(",")]:
        outs = {}
        for b in map(int, args.batches.split(",")):
            for kernel in (True, False):
                tome_mod.MERGE_KERNEL = kernel
                pruned = raggedvit.prune(model, "tome", **opts).eval()
                g = capture(pruned, b, example=images[:b])
                us = graph_replay_us(g.graph, dev, replays=max(20, 4000 // b))
                nk, dev_us = kernels_per_replay(g)
                if b == 8:
                    outs[kernel] = (g(images[:8], clone=True).float(), [c.clone() for c in g.stats.kept])
                rows.append(dict(options=opts, batch=b, merge="kernel" if kernel else "torch", us=us,
                                 images_per_s=b / us * 1e6, kernels=nk, device_us=dev_us))
                print(f"tome {opts} b{b:<4d} {'kernel' if kernel else 'torch':6s} {us:9.1f} us "
                      f"{b / us * 1e6:9.0f} img/s {nk:6.0f} kernels", flush=True)
                del g, pruned
        tome_mod.MERGE_KERNEL = True
        if len(outs) == 2:
            (lk, ck), (lt, ct) = outs[True], outs[False]
            agree = dict(options=opts, max_logit_diff=(lk - lt).abs().max().item(),
                         same_top1=int((lk.argmax(-1) == lt.argmax(-1)).sum()),
                         same_counts=all(torch.equal(a, b) for a, b in zip(ck, ct)))
            rows.append(agree)
            print(f"agreement kernel vs torch, b8: {agree}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tome-ab.json").write_text(json.dumps({"env": environment(dev), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

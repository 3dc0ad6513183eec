"""Where does AOTInductor's package loader crash on the GPU? (torch 2.11: ``aoti_load_package`` of a pruned
model's CUDA package segfaulted inside ``AOTIModelPackageLoader``.)

Builds small CUDA packages, each isolating one ingredient, and loads + runs each in a child process (a crash
fails that case only):

- ``linear``: a plain ``nn.Linear`` (does the loader work at all on this machine?);
- ``op_<name>``: a module that calls one raggedvit custom op (the package reaches it through AOTI's proxy
  executor), one case per op the pruned forward uses;
- ``pruned``: the trained ViT-Tiny pruned with EViT (fixed), as ``gpu_compile.py`` builds it;
- ``linear_cpu``: the same on the CPU (a CPU package);

and loads each crashing package again through AOTInductor's model runner on the package's extracted ``.so``
(without ``AOTIModelPackageLoader``), and the first ``--gdb`` of them under ``cuda-gdb`` for a native
backtrace.

Usage (GPU machine): ``PYTHONPATH=src python3 benchmarks/aoti_probe.py --out $OUT [--cxx COMPILER]``. Prints the
toolchain, then one line per case (with the wrapper ``.so``'s size and whether it links ``libstdc++.so.6``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

_CHILD = r"""
import json, sys, time, torch
import raggedvit  # registers the raggedvit ops the package calls
io, pkg = sys.argv[1], sys.argv[2]
inputs = torch.load(io)["inputs"]
print("loading", flush=True)
kw = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
if kw.pop("direct", False):  # the runner on the package's extracted .so, without AOTIModelPackageLoader
    import glob, tempfile, zipfile
    tmp = tempfile.mkdtemp()
    zipfile.ZipFile(pkg).extractall(tmp)
    so = glob.glob(tmp + "/*/data/aotinductor/model/*.so")[0]
    print("runner on", so, flush=True)
    on_cuda = inputs[0].is_cuda
    runner = (torch._C._aoti.AOTIModelContainerRunnerCuda(so, 1, "cuda") if on_cuda else
              torch._C._aoti.AOTIModelContainerRunnerCpu(so, 1))
    fn = lambda *xs: runner.run(list(xs))
else:
    fn = torch._inductor.aoti_load_package(pkg, **kw)
print("loaded", flush=True)
with torch.no_grad():
    out = fn(*inputs)
    torch.cuda.synchronize() if torch.cuda.is_available() else None
out = out[0] if isinstance(out, (tuple, list)) else out
torch.save({"out": out.cpu()}, io + ".out")
print("ran", flush=True)
"""


class OpModule(torch.nn.Module):
    """Calls one function of raggedvit on its inputs (the function dispatches to the custom op under export)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def op_cases(dev):
    """name -> (module, inputs): one raggedvit op each, at ViT-Tiny shapes (fp16)."""
    from raggedvit.ops.attention import ragged_attention
    from raggedvit.ops.layernorm import ragged_layer_norm
    from raggedvit.ops.linear import ragged_linear

    g = torch.Generator(device="cpu").manual_seed(0)
    h = torch.float16

    def r(*s, dtype=h):
        return torch.randn(*s, generator=g).to(dev, dtype)

    lens = torch.tensor([0, 197, 394], dtype=torch.int32, device=dev)
    x, w, b = r(394, 192), r(576, 192), r(576)
    cases = {
        "op_layer_norm": (lambda x, w, b, live: ragged_layer_norm(x, w, b, live), (x, r(192), r(192), lens[-1:])),
        "op_linear_bias": (lambda x, w, b, live: ragged_linear(x, w, b, live), (x, w, b, lens[-1:])),
        "op_linear_nobias": (lambda x, w, live: ragged_linear(x, w, None, live), (x, w, lens[-1:])),
        "op_attention": (lambda q, k, v, cu: ragged_attention(q, k, v, cu, 197),
                         (r(394, 3, 64), r(394, 3, 64), r(394, 3, 64), lens)),
    }
    return {k: (OpModule(fn), args) for k, (fn, args) in cases.items()}


def build(name, module, inputs, out_dir):
    """Export + package; returns (package path, io path)."""
    t0 = time.perf_counter()
    with torch.no_grad():
        ep = torch.export.export(module, tuple(inputs))
        path = torch._inductor.aoti_compile_and_package(ep, package_path=str(out_dir / f"{name}.pt2"))
    io = out_dir / f"{name}.io.pt"
    torch.save({"inputs": [t.cpu() if False else t for t in inputs]}, io)
    with torch.no_grad():
        ref = module(*inputs)
    return path, io, ref, time.perf_counter() - t0


def load_child(path, io, gdb=False, timeout=300, **kw):
    cmd = [sys.executable, "-X", "faulthandler", "-c", _CHILD, str(io), str(path), json.dumps(kw)]
    if gdb:
        cmd = ["cuda-gdb", "-batch", "-ex", "set pagination off", "-ex", "run", "-ex", "bt 40",
               "-ex", "info sharedlibrary", "--args"] + cmd
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return -1, f"timeout after {timeout} s: {(e.stdout or '')[-2000:]}"
    return done.returncode, (done.stdout + "\n" + done.stderr)


def toolchain(cxx: str | None) -> None:
    """Print the compiler the packages are built with and where its libstdc++ comes from (the packages built
    on the H200 machine carried a static copy of libstdc++), and select ``cxx`` if given."""
    import os

    if cxx:
        torch._inductor.config.cpp.cxx = (None, cxx)
    name = cxx or os.environ.get("CXX", "g++")
    for cmd in ([name, "--version"], [name, "-print-file-name=libstdc++.so"], [name, "-print-file-name=libstdc++.a"]):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip().splitlines()
        except (OSError, subprocess.SubprocessError) as e:
            out = [f"{type(e).__name__}: {e}"]
        print(f"toolchain: {' '.join(cmd)} -> {out[0] if out else ''}", flush=True)
    print(f"toolchain: CXX={os.environ.get('CXX')!r}", flush=True)


def so_facts(path: str) -> dict:
    """Size of the package's wrapper ``.so`` and whether it links ``libstdc++.so.6`` or carries its own copy."""
    import zipfile

    from raggedvit.models.export import static_libstdcxx

    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith(".so")))
    return {"so_kb": len(data) // 1024, "links_libstdcxx_so": not static_libstdcxx(path),
            "has_locale_classic": b"_ZNSt6locale7classicEv" in data}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--cases", default="linear,linear_cpu,ops,pruned",
                    help="comma-separated: linear, linear_cpu, ops, pruned")
    ap.add_argument("--gdb", type=int, default=1, help="native backtraces of this many crashing cases")
    ap.add_argument("--gdb-timeout", type=int, default=300)
    ap.add_argument("--load-timeout", type=int, default=300, help="seconds a child may take to load and run")
    ap.add_argument("--cxx", default=None, help="C++ compiler the packages are built with (Inductor's cpp.cxx; "
                    "default: $CXX, else g++)")
    args = ap.parse_args()
    toolchain(args.cxx)
    out_dir = Path(args.out)
    work = out_dir / "aoti-probe-work"
    work.mkdir(parents=True, exist_ok=True)
    ap_dev = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(ap_dev)
    want = set(args.cases.split(","))
    cases = {}
    if "linear" in want:
        torch.manual_seed(0)
        cases["linear"] = (torch.nn.Linear(64, 32).to(dev), (torch.randn(8, 64, device=dev),))
    if "linear_cpu" in want:
        torch.manual_seed(0)
        cases["linear_cpu"] = (torch.nn.Linear(64, 32), (torch.randn(8, 64),))
    if "ops" in want:
        cases.update(op_cases(dev))
    if "pruned" in want:
        import raggedvit
        from raggedvit import sample_data

        model = sample_data.load_model(sample_data.locate()).to(dev, torch.float16).eval()
        photos, _ = sample_data.load_images(model, range(8), sample_data.locate())
        cases["pruned"] = (raggedvit.prune(model, "evit", variant="fixed").eval(),
                           (photos.to(dev, torch.float16),))
    results = {}
    crashed = []
    for name, (module, inputs) in cases.items():
        row = results.setdefault(name, {})
        try:
            print(f"{name}: building", flush=True)
            path, io, ref, build_s = build(name, module, inputs, work)
            row["build_s"] = round(build_s, 1)
            print(f"{name}: built in {build_s:.1f} s; loading in a child process", flush=True)
            row.update(so_facts(path))
            for suffix, kw in (("", {}), ("_direct_runner", {"direct": True})):  # direct: no package loader
                rc, log = load_child(path, io, timeout=args.load_timeout, **kw)
                row["rc" + suffix] = rc
                if rc == 0:
                    out = torch.load(str(io) + ".out")["out"]
                    ref0 = ref[0] if isinstance(ref, (tuple, list)) else ref
                    row["max_diff" + suffix] = (out.float() - ref0.float().cpu()).abs().max().item()
                    break
                row["log" + (suffix or "_tail")] = "\n".join(log.strip().splitlines()[-25:])
                if not suffix:
                    crashed.append((name, path, io))
        except Exception as e:  # noqa: BLE001
            row["error"] = f"{type(e).__name__}: {e}"[-1500:]
        print(f"{name}: {json.dumps({k: v for k, v in row.items() if k != 'log_tail'})}", flush=True)
    crashed.sort(key=lambda c: not c[0].endswith("_cpu"))  # CPU packages first: no GPU in the backtrace
    for name, path, io in crashed[:args.gdb]:  # a native backtrace of the first crashes
        if shutil.which("cuda-gdb") is None:
            print("cuda-gdb not on PATH: no native backtrace")
            break
        rc, log = load_child(path, io, gdb=True, timeout=args.gdb_timeout)
        results[name]["gdb_rc"] = rc
        (out_dir / f"aoti-probe-gdb-{name}.log").write_text(log)
        bt = [ln for ln in log.splitlines() if ln.startswith("#")]
        print(f"{name} native backtrace (cuda-gdb):\n" + "\n".join(bt[:40]), flush=True)
    (out_dir / "aoti-probe.json").write_text(json.dumps(results, indent=1))
    for name, row in results.items():
        for key in ("log_tail", "log_direct_runner"):
            if row.get(key):
                print(f"--- {name} {key} (rc {row.get('rc')}):\n{row[key]}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

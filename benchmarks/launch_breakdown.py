"""Where the host time of one ``raggedvit.ragged_attention`` call goes (CUDA only).

Times, back to back and best of 20 rounds of 2000 calls: the whole call, its input validation, the
output allocation, the direct launch of the cached kernel through Triton's C launcher alone, and the
eager floor ``x.add_(1)``. The batch is empty (all lengths 0) so the GPU never throttles the host loop.
Usage: ``PYTHONPATH=src python3 benchmarks/launch_breakdown.py``.
"""

import time

import torch

import raggedvit
from raggedvit.ops import attention as A
from raggedvit.ops.launch import raw_stream


def best_us(fn, n=2000, rounds=20):
    best = float("inf")
    for _ in range(rounds):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n * 1e6)
    torch.cuda.synchronize()
    return best


def main():
    dev = torch.device("cuda")
    T, H, D = 1000, 6, 64
    q, k, v = torch.randn(T, 3, H, D, device=dev, dtype=torch.float16).unbind(1)
    cu = torch.zeros(9, dtype=torch.int32, device=dev)
    out = torch.empty(T, H, D, device=dev, dtype=torch.float16)
    raggedvit.ragged_attention(q, k, v, cu, 197)
    raggedvit.ragged_attention(q, k, v, cu, 197)
    key = (q.dtype, D, 0, q.stride(), k.stride(), v.stride(), torch.empty_like(q).stride())
    call, prefix, constant = A.launcher.cache[key]
    ptrs = (q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), cu.data_ptr())
    stream = raw_stream(0)
    x = torch.zeros(1, device=dev)

    def validation_only():  # the same checks as ragged_attention's common path
        A._check_inputs(q, k, v, cu, 197, None, None)

    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {A.triton.__version__}")
    rows = [("x.add_(1) (eager floor)", lambda: x.add_(1)),
            ("ragged_attention, whole call", lambda: raggedvit.ragged_attention(q, k, v, cu, 197)),
            ("input validation (_check_inputs)", validation_only),
            ("output allocation (torch.empty_like)", lambda: torch.empty_like(q)),
            ("Triton C launcher, cached kernel", lambda: call(4, 9, H, stream, *prefix, *ptrs, T, *constant))]
    for name, fn in rows:
        print(f"{name:40s} {best_us(fn):7.2f} us")


if __name__ == "__main__":
    main()

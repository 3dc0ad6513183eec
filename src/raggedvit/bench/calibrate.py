"""Realistic kept-token counts without pretrained weights: keep-rate calibration and a lengths mode.

Random-init DeiT weights give near-uniform CLS attention (ATS with its default 196 samples then keeps
~195 of 196 tokens), and speed depends on the kept counts. Two ways to make them realistic:

* :func:`calibrate` tunes one scalar of each adaptive method on calibration images so that the mean
  per-stage keep rate (non-prefix tokens after a stage / before it, averaged over images and stages)
  hits a stated target: Threshold-L2 per-stage absolute thresholds (the quantile rule of
  :func:`raggedvit.models.calibrate_thresholds`), EViT-adaptive ``mass``, DynamicViT-adaptive
  ``keep_threshold`` and ATS ``num_samples`` by bisection. Fixed variants take ``keep_rate`` directly.
  Defaults: 0.7 per stage (the published EViT/DynamicViT budgets at blocks 3/6/9), 0.9 per stage for
  ATS (nine stages, blocks 3..11: about the published 4.6 -> ~3 GFLOPs of ATS DeiT-S).
* the *lengths* mode (method ``"lengths"``) prunes with DynamicViT's adaptive rule driven by
  :class:`LengthsPredictor` modules that keep, per image and stage, a number of tokens drawn from a stated
  distribution of keep rates (:func:`parse_dist`: ``uniform:LO:HI``, ``normal:MEAN:STD``,
  ``beta:A:B``, ``const:R``), so the pipelines' speed can be measured at any raggedness. Its scoring
  (a token norm and one sort) is cheaper than a real predictor MLP.

Offline tools: calibration reads kept counts back to the host.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ..models import calibrate_thresholds, prune
from ..pruning import make_method
from ..pruning.dynamicvit import Predictor
from ..runtime.errors import UsageError

__all__ = ["dynamicvit_predictors", "default_keep_rate", "measure_keep",
           "calibrate", "point_options", "parse_dist", "draw_lengths", "LengthsPredictor", "lengths_predictors",
           "set_lengths"]


def dynamicvit_predictors(model: nn.Module, predictor_state: dict | None = None) -> nn.ModuleList:
    """DynamicViT predictors on the model's device/dtype, shared by every pipeline of a benchmark point:
    ``predictor_state`` (a checkpoint's ``score_predictor.*`` weights without the prefix, as
    :func:`raggedvit.runtime.loading.load_model` returns them) loaded strictly when given, else randomly
    initialised."""
    p = prune(model, "dynamicvit", layout="padded", random_predictors=True)  # replaced by predictor_state if given
    if predictor_state:
        try:
            p.score_predictor.load_state_dict(predictor_state, strict=True)
        except RuntimeError as e:
            raise UsageError(f"--checkpoint: its DynamicViT predictors do not fit this model: {e}") from None
    ref = next(model.parameters())
    return p.score_predictor.to(device=ref.device, dtype=ref.dtype)


BENCH_KEEP_RATES = {"ats": 0.9}  # the published budgets; every other method 0.7


def default_keep_rate(method: str) -> float:
    """The per-stage keep rate a method is calibrated to unless stated: the published budgets, 0.9 for ATS
    (nine stages) and 0.7 for the others (three stages). Fixed on purpose: the methods' own defaults
    (``make_method(method).keep_rate``) are chosen for accuracy on a trained model and may change."""
    make_method(method)  # ValueError for an unknown method
    return BENCH_KEEP_RATES.get(method, 0.7)


def _stage_rates(kept: list[list[int]], num_prefix: int, n0: int) -> list[float]:
    """Mean per-stage keep rate: non-prefix tokens after each stage over those before it."""
    rates, prev = [], [n0 - num_prefix] * (len(kept[0]) if kept else 0)
    for k in kept:
        cur = [c - num_prefix for c in k]
        rates.append(sum(c / max(p, 1) for c, p in zip(cur, prev)) / max(1, len(cur)))
        prev = cur
    return rates


@torch.no_grad()
def measure_keep(model: nn.Module, method: str, options: dict, images: torch.Tensor, *, attention: str = "reference",
                 batch_size: int = 64) -> dict:
    """Run ``prune(model, method, **options)`` (packed) on ``images``; kept-count statistics (host values).

    Returns ``{"keep_rate": mean per-stage rate, "stage_rates": [...], "kept": per stage list of per-image
    counts (prefix included)}``.
    """
    pruned = prune(model, method, attention=attention, **options).eval()
    per_stage: list[list[int]] = []
    for chunk in images.split(batch_size):
        pruned(chunk)
        ks = [k.tolist() for k in pruned.last_stats.kept]
        per_stage = ks if not per_stage else [a + b for a, b in zip(per_stage, ks)]
    rates = _stage_rates(per_stage, model.num_prefix_tokens, model.num_prefix_tokens + model.patch_embed.num_patches)
    return {"keep_rate": sum(rates) / max(1, len(rates)), "stage_rates": rates, "kept": per_stage}


def _bisect(f: Callable[[float], float], lo: float, hi: float, target: float, increasing: bool, steps: int,
            integer: bool = False) -> tuple[float, float]:
    """``x`` in ``[lo, hi]`` with ``f(x)`` closest to ``target`` (``f`` monotone); returns ``(x, f(x))``."""
    best = None
    for _ in range(steps):
        mid = (lo + hi) // 2 if integer else (lo + hi) / 2
        v = f(mid)
        if best is None or abs(v - target) < abs(best[1] - target):
            best = (mid, v)
        if (v < target) == increasing:
            lo = mid + 1 if integer else mid
        else:
            hi = mid - 1 if integer else mid
        if integer and lo > hi:
            break
    return best


def calibrate(model: nn.Module, method: str, variant: str, images: torch.Tensor, *, keep_rate: float | None = None,
              attention: str = "reference", options: dict | None = None, steps: int = 10,
              batch_size: int = 64) -> tuple[dict, dict]:
    """Options for ``prune(model, method, **options)`` that keep ``keep_rate`` per stage on ``images``.

    Args:
        model: the timm model (random or pretrained weights).
        method, variant: as for :func:`raggedvit.prune`.
        images: calibration images ``(N, 3, H, W)`` on the model's device/dtype (not the benchmark inputs).
        keep_rate: target mean per-stage keep rate (default :func:`default_keep_rate`).
        attention: packed backend for the calibration forwards.
        options: extra prune options kept as given (e.g. ``k_max``, ``predictors``).
        steps: bisection steps.

    Returns:
        ``(options, info)``: the prune options (including the calibrated one) and
        ``{"param", "value", "target_keep_rate", "achieved_keep_rate", "stage_rates", "images"}``.
    """
    rate = default_keep_rate(method) if keep_rate is None else float(keep_rate)
    opts = {**(options or {}), "variant": variant}
    n = model.patch_embed.num_patches
    run = lambda o: measure_keep(model, method, o, images, attention=attention, batch_size=batch_size)  # noqa: E731
    param, value = "keep_rate", rate
    if variant == "fixed" or method == "none":
        opts["keep_rate"] = rate
    elif method == "threshold_l2":
        param = "thresholds"
        value = calibrate_thresholds(model, images, keep_rate=rate, batch_size=batch_size, k_max=opts.get("k_max"),
                                     stages=opts.get("stages", make_method(method).stages))
        opts["thresholds"] = value
    else:
        spec = {"evit": ("mass", 1e-3, 1.0, True, False), "ats": ("num_samples", 2, n, True, True),
                "dynamicvit": ("keep_threshold", 1e-4, 1 - 1e-4, False, False)}.get(method)
        if spec is None:
            raise ValueError(f"calibrate: no adaptive calibration for method {method!r}")
        param, lo, hi, increasing, integer = spec
        f = lambda x: run({**opts, param: int(x) if integer else float(x)})["keep_rate"]  # noqa: E731
        value, _ = _bisect(f, lo, hi, rate, increasing, steps if not integer else max(steps, math.ceil(math.log2(n))),
                           integer)
        value = int(value) if integer else float(value)
        opts[param] = value
    got = run(opts)
    info = {"param": param, "value": list(value) if isinstance(value, tuple) else value, "target_keep_rate": rate,
            "achieved_keep_rate": got["keep_rate"], "stage_rates": got["stage_rates"], "images": int(images.shape[0])}
    return opts, info


def point_options(model: nn.Module, predictor_state: dict | None, method: str, variant: str, batch: int, base: dict, *,
                  cache: dict, keep_rate: float | None = None, k_max: int | None = None,
                  lengths_dist: str | None = None, seed: int = 0, calib_images: int = 64,
                  attention: str = "triton") -> dict:
    """``prune`` options of one benchmark point; records what set the kept counts in ``base`` (a result row).

    ``method="lengths"``: DynamicViT-adaptive with :class:`LengthsPredictor` targets drawn from ``lengths_dist``
    for this ``batch``. Otherwise :func:`calibrate` on ``calib_images`` seeded random images (cached in ``cache``
    per model, method, variant and rate). ``k_max`` caps adaptive Threshold-L2/EViT/DynamicViT (every layout).
    """
    ref = next(model.parameters())
    capped = k_max and variant == "adaptive" and method in ("threshold_l2", "evit", "dynamicvit")
    opts = {"k_max": k_max} if capped else {}
    base["k_max"] = opts.get("k_max")
    if method == "lengths":
        preds = lengths_predictors(model.embed_dim, 3).to(ref.device, ref.dtype)
        set_lengths(preds, draw_lengths(lengths_dist, batch, model.patch_embed.num_patches, 3, seed=seed + batch))
        base.update(lengths_dist=lengths_dist, keep_rate=None)
        return {**opts, "variant": "adaptive", "predictors": preds}
    rate = default_keep_rate(method) if keep_rate is None else keep_rate
    base["keep_rate"] = rate
    if method == "dynamicvit":
        opts["predictors"] = dynamicvit_predictors(model, predictor_state)
    key = (id(model), method, variant, rate)
    if key not in cache:
        g = torch.Generator().manual_seed(seed + 12345)
        size = model.patch_embed.img_size
        imgs = torch.randn(calib_images, 3, *size, generator=g).to(ref.device, ref.dtype)
        cache[key] = calibrate(model, method, variant, imgs, keep_rate=rate, options=opts, attention=attention)
    opts, base["calibration"] = cache[key]
    return opts


# ---------------------------------------------------------------------------------------------- lengths mode


def parse_dist(spec: str) -> Callable[[int, torch.Generator], torch.Tensor]:
    """``sample(n, generator) -> (n,)`` keep rates in ``(0, 1]`` from ``uniform:LO:HI``, ``normal:MEAN:STD``
    (clipped), ``beta:A:B`` or ``const:R``. ``ValueError`` on anything else."""
    name, _, rest = spec.partition(":")
    try:
        vals = [float(v) for v in rest.split(":")] if rest else []
    except ValueError:
        vals = None
    arity = {"uniform": 2, "normal": 2, "beta": 2, "const": 1}
    if name not in arity or vals is None or len(vals) != arity[name]:
        raise ValueError(f"lengths distribution {spec!r}: expected uniform:LO:HI, normal:MEAN:STD, beta:A:B or const:R")
    clip = lambda t: t.clamp(1e-3, 1.0)  # noqa: E731
    if name == "uniform":
        lo, hi = vals
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"lengths distribution {spec!r}: need 0 < LO <= HI <= 1")
        return lambda n, g: lo + (hi - lo) * torch.rand(n, generator=g)
    if name == "normal":
        return lambda n, g: clip(vals[0] + vals[1] * torch.randn(n, generator=g))
    if name == "beta":
        d = torch.distributions.Beta(torch.tensor(vals[0]), torch.tensor(vals[1]))
        return lambda n, g: clip(d.sample((n,)))  # Beta has no generator argument: seeded via torch.manual_seed
    if not 0 < vals[0] <= 1:
        raise ValueError(f"lengths distribution {spec!r}: need 0 < R <= 1")
    return lambda n, g: torch.full((n,), vals[0])


def draw_lengths(spec: str, batch: int, num_patches: int, num_stages: int, *, seed: int) -> torch.Tensor:
    """``(num_stages, batch)`` int64 kept patch tokens per stage and image: each stage keeps
    ``round(rate * previous)`` (at least 1) with a fresh per-image ``rate`` drawn from ``spec``."""
    sample = parse_dist(spec)
    g = torch.Generator().manual_seed(seed)
    if spec.startswith("beta"):
        torch.manual_seed(seed)
    prev = torch.full((batch,), num_patches, dtype=torch.float64)
    out = []
    for _ in range(num_stages):
        cur = torch.minimum(torch.clamp(torch.round(sample(batch, g).double() * prev), min=1.0), prev)
        out.append(cur)
        prev = cur
    return torch.stack(out).long()


class LengthsPredictor(Predictor):
    """A DynamicViT predictor (``forward(x, seg_ids, dense_rows, cand) -> (R, 2)`` log-probs) that keeps, in
    each image, the ``target[b]`` candidates of largest L2 norm (``p_keep`` 0.99, the others 0.01).

    Subclasses :class:`~raggedvit.pruning.dynamicvit.Predictor` because ``prune`` accepts only those; the
    inherited MLP weights are never used. Sync-free and graph-safe: ``target`` is a device buffer that
    :func:`set_lengths` rewrites in place.
    """

    def __init__(self, embed_dim: int) -> None:
        super().__init__(embed_dim)
        self.register_buffer("target", torch.zeros(0, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor, seg_ids: torch.Tensor, dense_rows: torch.Tensor,
                cand: torch.Tensor) -> torch.Tensor:
        """Keep/drop log-probabilities for every row of ``x: (R, C)``; unused rows get "drop"."""
        R = x.shape[0]
        s = torch.linalg.vector_norm(x.float(), dim=-1)[dense_rows].masked_fill(~cand, float("-inf"))
        order = torch.sort(s, dim=1, descending=True, stable=True).indices
        pos = torch.arange(order.shape[1], device=x.device).expand_as(order)
        rank = torch.empty_like(order).scatter_(1, order, pos)
        keep = cand & (rank < self.target[:, None])
        flag = torch.zeros(R + 1, dtype=torch.float32, device=x.device)
        flag.scatter_(0, torch.where(cand, dense_rows, R).reshape(-1), keep.reshape(-1).float())
        p = flag[:R, None] * 0.98 + 0.01  # (R, 1) p_keep
        return torch.cat([p, 1.0 - p], dim=1).log().to(x.dtype)


def lengths_predictors(embed_dim: int, num_stages: int = 3) -> nn.ModuleList:
    """One :class:`LengthsPredictor` per stage (pass as ``prune(model, "dynamicvit", variant="adaptive",
    predictors=...)``)."""
    return nn.ModuleList(LengthsPredictor(embed_dim) for _ in range(num_stages))


def set_lengths(predictors: nn.ModuleList, counts: torch.Tensor) -> None:
    """Write ``counts: (num_stages, batch)`` (from :func:`draw_lengths`) into the predictors' buffers, in place
    when the shape is unchanged (so captured graphs see the new values)."""
    for p, c in zip(predictors, counts):
        if p.target.shape == c.shape:
            p.target.copy_(c, non_blocking=True)
        else:
            p.target = c.to(p.target.device).clone()  # buffers follow .to(device)

"""Pruned models for the commands (demo, eval, bench exactness): method names, options, calibration, predictors.

Thin layer over :func:`raggedvit.prune` that (1) validates method, layout and variant names with messages
listing the valid ones, (2) calibrates Threshold-L2's thresholds on the images it is given (and says
so), (3) hands DynamicViT predictor weights found in ``--checkpoint`` to the pruned model (random ones only
when asked: ``--random-predictors``; :func:`usable_methods` drops DynamicViT from ``all`` otherwise), and
(4) returns printable notes for everything that affects how to read the results.
"""

from __future__ import annotations

import torch

from ..pruning import METHODS, DynamicViT, ThresholdL2, make_method, pruning_methods
from ..pruning.threshold_l2 import CALIBRATION_KEEP_RATE
from .errors import UsageError
from .loading import LoadedModel

LAYOUTS = ("padded", "packed")
VARIANTS = ("default", "fixed", "adaptive")


def method_names() -> tuple[str, ...]:
    """Every pruning method ``raggedvit.prune`` accepts (``"none"`` included): the registry's names."""
    return tuple(METHODS)


def check_methods(names: list[str]) -> list[str]:
    """``names`` with ``"all"`` expanded; :class:`UsageError` listing the valid names on an unknown one."""
    valid = method_names()
    out: list[str] = []
    for n in names:
        for m in (pruning_methods() if n == "all" else [n]):
            if m not in valid:
                raise UsageError(f"unknown pruning method {m!r}; valid: all, {', '.join(valid)}")
            if m not in out:
                out.append(m)
    return out


def check_layouts(names: list[str]) -> list[str]:
    """``names`` without duplicates; :class:`UsageError` listing the valid layouts on an unknown one."""
    for n in names:
        if n not in LAYOUTS:
            raise UsageError(f"unknown layout {n!r}; valid: {', '.join(LAYOUTS)}")
    return list(dict.fromkeys(names))


def add_method_arguments(parser) -> None:
    """Add ``--variant`` and ``--keep-rate`` (options shared by every method)."""
    parser.add_argument("--variant", default="default", choices=VARIANTS,
                        help="keep rule: each method's default (fixed for dynamicvit/evit, adaptive for "
                             "ats/threshold_l2), or force fixed-count / adaptive per-image counts")
    own = ", ".join(f"{m} {make_method(m).keep_rate:g}" for m in pruning_methods()
                    if hasattr(make_method(m), "keep_rate"))
    parser.add_argument("--keep-rate", type=float, metavar="R",
                        help=f"keep rate per stage of the fixed variants, in (0, 1] (default: each method's own: "
                             f"{own}); "
                             "for adaptive threshold_l2, the share of tokens its thresholds are calibrated to keep per "
                             f"stage (default {CALIBRATION_KEEP_RATE:g})")
    parser.add_argument("--random-predictors", action="store_true",
                        help="run dynamicvit with randomly initialised keep predictors when --checkpoint has no "
                             "trained ones (score_predictor.* keys): they prune arbitrarily, for speed only")


def _options(method: str, variant: str, keep_rate: float | None) -> dict:
    if method == "none":
        return {}
    options: dict = {}
    if variant != "default":
        options["variant"] = variant
    if keep_rate is not None:
        options["keep_rate"] = keep_rate
    return options


def _effective_variant(method: str, variant: str) -> str:
    return variant if variant != "default" else str(getattr(make_method(method), "variant", "fixed"))


def usable_methods(requested: list[str], methods: list[str], loaded: LoadedModel,
                   random_predictors: bool) -> tuple[list[str], list[str]]:
    """``(methods, notes)``: ``methods`` (from :func:`check_methods`) that can run on ``loaded``.

    DynamicViT needs trained keep predictors (``--checkpoint`` with ``score_predictor.*`` keys) unless
    ``random_predictors``: named explicitly in ``requested`` it is a :class:`UsageError` saying how to pass
    them; as part of ``all`` it is dropped with a note.
    """
    if "dynamicvit" not in methods or loaded.predictor_state or random_predictors:
        return methods, []
    how = ("pass --checkpoint PATH holding the model's timm keys and trained DynamicViT predictors "
           "(score_predictor.{i}.* keys, the official checkpoint layout), or --random-predictors to time it with "
           "random predictors (they prune arbitrarily: speed only)")
    if "dynamicvit" in requested:
        raise UsageError(f"dynamicvit needs trained keep predictors and {loaded.weights} has none: {how}")
    return [m for m in methods if m != "dynamicvit"], [f"dynamicvit skipped: no trained keep predictors; {how}"]


def build_pruned(loaded: LoadedModel, method: str, *, layout: str, attention: str, variant: str = "default",
                 keep_rate: float | None = None, calibration: torch.Tensor | None = None,
                 calibration_source: str = "", cache: dict | None = None,
                 random_predictors: bool = True, padding: str = "max") -> tuple[torch.nn.Module, list[str]]:
    """``(raggedvit.prune(loaded.model, method, layout=..., attention=..., padding=..., **options), notes)``.

    Threshold-L2 (adaptive) thresholds are calibrated once on ``calibration`` (images in the model's input
    format; keep rate ``keep_rate`` or :data:`~raggedvit.pruning.threshold_l2.CALIBRATION_KEEP_RATE`) and
    DynamicViT predictors are built once; both are reused for every layout through ``cache``. DynamicViT
    without predictors in ``loaded``: seed-0 random ones with a note when ``random_predictors`` (the default,
    for benchmarks), else :class:`UsageError`. Notes are sentences for the caller to print (each one once per
    ``cache``).
    """
    import raggedvit

    if keep_rate is not None and not 0.0 < keep_rate <= 1.0:
        raise UsageError(f"--keep-rate {keep_rate}: must be in (0, 1]")
    cache = {} if cache is None else cache
    options = _options(method, variant, keep_rate)
    notes: list[str] = []
    if METHODS[method] is ThresholdL2 and _effective_variant(method, variant) == "adaptive":
        if "threshold_l2" not in cache:
            if calibration is None:
                raise UsageError("threshold_l2 needs calibration images")
            cache["threshold_l2"] = _calibrate(loaded.model, calibration, keep_rate)
            notes.append(f"threshold_l2: thresholds {', '.join(f'{t:.4g}' for t in cache['threshold_l2'])} "
                         f"calibrated on {calibration_source or f'{calibration.shape[0]} images'} "
                         f"(keep rate {keep_rate or CALIBRATION_KEEP_RATE} per stage)")
        options["thresholds"] = cache["threshold_l2"]
    if METHODS[method] is DynamicViT:
        if "dynamicvit" not in cache:
            if not loaded.predictor_state and not random_predictors:
                usable_methods(["dynamicvit"], ["dynamicvit"], loaded, False)  # raises, saying how
            cache["dynamicvit"] = _predictors(loaded)
            notes.append("dynamicvit: keep predictors from --checkpoint" if loaded.predictor_state else
                         "dynamicvit: no DynamicViT checkpoint, so its keep predictors are randomly initialised "
                         "(seed 0, shared by every layout) and prune arbitrarily; token counts and speed are real")
        options["predictors"] = cache["dynamicvit"]
    try:
        pruned = raggedvit.prune(loaded.model, method, layout=layout, attention=attention, padding=padding, **options)
    except ValueError as e:
        raise UsageError(f"{method} ({layout}): {str(e).removeprefix('prune: ')}") from None
    return pruned.eval(), notes


def _calibrate(model: torch.nn.Module, images: torch.Tensor, keep_rate: float | None) -> tuple[float, ...]:
    from ..models import calibrate_thresholds

    try:
        with torch.inference_mode():
            rate = CALIBRATION_KEEP_RATE if keep_rate is None else keep_rate
            return tuple(calibrate_thresholds(model, images, keep_rate=rate))
    except ValueError as e:
        raise UsageError(f"threshold_l2 calibration: {e}") from None


def _predictors(loaded: LoadedModel) -> torch.nn.ModuleList:
    """DynamicViT predictors: the checkpoint's, else randomly initialised with seed 0 (one set for all layouts)."""
    from ..pruning.dynamicvit import make_predictors

    state = loaded.predictor_state
    if state:
        predictors = make_predictors(loaded.model.embed_dim, len({k.split(".")[0] for k in state}))
        try:
            predictors.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise UsageError(f"--checkpoint: its DynamicViT predictors do not fit this model: {e}") from None
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            predictors = make_predictors(loaded.model.embed_dim, len(DynamicViT().stages))
    ref = next(loaded.model.parameters())
    return predictors.to(device=ref.device, dtype=ref.dtype).eval()

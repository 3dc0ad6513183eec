"""Shared setup for the product commands: device, dtype, attention backend, model weights, timing, errors.

Every choice that could surprise a user is printed by the caller (which device, dtype, attention backend
and weights ran); nothing falls back silently. Problems a person can fix raise :class:`UsageError`, which
:func:`run_command` turns into one ``raggedvit <command>: error: ...`` line on stderr and exit status 2.

Weights: ``--checkpoint PATH`` loads a local file (timm key names; a ``{"model": ...}`` or
``{"state_dict": ...}`` wrapper and a ``module.`` prefix are accepted) and reports missing or unexpected
keys by name. Otherwise timm's pretrained weights are used when they are in the local cache or the hub
answers; with ``--weights auto`` an unreachable hub gives a printed notice and random weights.
"""

from __future__ import annotations

import datetime
import os
import platform
import socket
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

WEIGHT_CHOICES = ("auto", "pretrained", "random")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PREDICTOR_PREFIX = "score_predictor."  # DynamicViT keep predictors in an official checkpoint


class UsageError(Exception):
    """A problem the user can act on (bad path, unknown name, option this machine cannot run)."""


def run_command(name: str, fn: Callable[[], int]) -> int:
    """Run ``fn``; a :class:`UsageError` becomes one ``raggedvit <name>: error: ...`` line and status 2."""
    try:
        return int(fn() or 0)
    except UsageError as e:
        print(f"raggedvit {name}: error: {e}", file=sys.stderr)
        return 2


def add_common_arguments(parser, *, default_model: str = "deit_small_patch16_224") -> None:
    """Add ``--model --checkpoint --weights --device --dtype --attention`` to an argparse parser."""
    parser.add_argument("--model", default=default_model, help=f"timm DeiT/ViT model name (default {default_model})")
    parser.add_argument("--checkpoint", metavar="PATH", help="load weights from this file (timm key names) "
                        "instead of timm's pretrained weights")
    parser.add_argument("--weights", choices=WEIGHT_CHOICES, default="auto",
                        help="without --checkpoint: 'pretrained' needs timm's weights (cache or hub), 'random' "
                             "skips them, 'auto' (default) uses them when reachable, else random with a notice")
    parser.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="auto", choices=("auto", *DTYPES),
                        help="auto = float16 on cuda, float32 on cpu")
    parser.add_argument("--attention", default="auto",
                        help="attention backend of the packed layout: auto (triton on cuda, reference on cpu) "
                             "or a name from raggedvit.ops.backends")


def resolve_device(spec: str) -> torch.device:
    """``auto``/``cpu``/``cuda``/``cuda:N`` -> a device this machine has, else :class:`UsageError`."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UsageError(f"--device {spec!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {spec}: no CUDA device is available here (torch {torch.__version__}, "
                             f"torch.cuda.is_available() is False); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise UsageError(f"--device {spec}: only cpu and cuda are supported")
    return device


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """``auto`` -> float16 on cuda, float32 on cpu. float16 on cpu is refused with the reason."""
    if spec == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    dtype = DTYPES[spec]
    if dtype == torch.float16 and device.type == "cpu":
        raise UsageError("--dtype float16 needs a CUDA GPU: the packed layout's Triton kernel runs on the GPU and "
                         "raggedvit does not support float16 on CPU; use --dtype float32 (the CPU default) or "
                         "bfloat16, or --device cuda on a GPU machine")
    return dtype


def resolve_attention(spec: str, device: torch.device, dtype: torch.dtype) -> tuple[str, str]:
    """(backend name, one-line reason) for ``--attention``; unknown or unavailable names raise UsageError."""
    from ..ops.backends import BACKENDS, get_backend

    if spec == "auto":
        if device.type == "cuda":
            return "triton", "raggedvit's Triton kernel (auto on cuda)"
        return "reference", "pure-PyTorch reference (auto on cpu: the Triton kernel needs a CUDA GPU)"
    try:
        backend = get_backend(spec)
    except ValueError:
        raise UsageError(f"unknown attention backend {spec!r}; valid: auto, {', '.join(sorted(BACKENDS))}") from None
    reason = backend.unavailable_reason(device, dtype)
    if reason is not None:
        usable = [n for n in sorted(BACKENDS) if BACKENDS[n].unavailable_reason(device, dtype) is None]
        raise UsageError(f"--attention {spec} cannot run on {device} with {str(dtype).removeprefix('torch.')}: "
                         f"{reason}. Usable here: {', '.join(usable) or 'none'}")
    return spec, backend.description


def check_model_name(name: str) -> None:
    """:class:`UsageError` naming close matches and the DeiT family when ``name`` is not a timm model."""
    import difflib

    import timm

    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=4, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UsageError(f"unknown model {name!r}.{hint} raggedvit runs timm ViT/DeiT models, e.g. "
                     f"{', '.join(timm.list_models('deit_*_patch16_224'))}")


def _cached_pretrained_file(cfg: dict) -> str | None:
    """Path of the model's pretrained weights in the Hugging Face or torch hub cache, if there."""
    if cfg.get("hf_hub_id"):
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - timm depends on huggingface_hub
            try_to_load_from_cache = None
        names = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else ["model.safetensors", "pytorch_model.bin"]
        for fname in names if try_to_load_from_cache else []:
            path = try_to_load_from_cache(cfg["hf_hub_id"], fname)
            if isinstance(path, str) and os.path.exists(path):
                return path
    if cfg.get("url"):
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg["url"]).path)
        if path.exists():
            return str(path)
    return None


def _hub_unreachable_reason(timeout: float = 3.0) -> str | None:
    """None when the Hugging Face hub answers a TCP connect within ``timeout`` s, else why not."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return "HF_HUB_OFFLINE is set"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError as e:
        return f"{url.hostname} is unreachable ({e})"
    return None


def load_state_dict_file(path: str) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file (.safetensors, or a torch pickle with an optional model wrapper)."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--checkpoint {path}: no such file" if not p.exists() else f"--checkpoint {path}: not a file")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(p))
        else:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # unreadable or not a checkpoint: say so with the loader's reason
        raise UsageError(f"--checkpoint {path}: cannot read it as a checkpoint ({type(e).__name__}: {e})") from None
    for key in ("model", "state_dict", "model_ema"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UsageError(f"--checkpoint {path}: expected a state dict of tensors, got {type(sd).__name__}")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _list(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_checkpoint_into(model: torch.nn.Module, sd: dict[str, torch.Tensor], path: str,
                         model_name: str) -> dict[str, torch.Tensor]:
    """Load state dict ``sd`` (read from ``path``) strictly into ``model``; missing, unexpected or mis-shaped
    keys raise :class:`UsageError` by name.

    DynamicViT predictor keys (``score_predictor.*``, the official checkpoint layout) are not model keys:
    they are returned (prefix removed) for :func:`raggedvit.prune`'s ``predictors``; empty if none.
    """
    sd = dict(sd)
    predictors = {k.removeprefix(PREDICTOR_PREFIX): sd.pop(k) for k in list(sd) if k.startswith(PREDICTOR_PREFIX)}
    own = model.state_dict()
    missing = own.keys() - sd.keys()
    unexpected = sd.keys() - own.keys()
    shapes = [f"{k} {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(own.keys() & sd.keys()) if sd[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_list(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_list(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): {'; '.join(shapes[:4])}")
    if problems:
        raise UsageError(f"--checkpoint {path} does not match --model {model_name}: " + "; ".join(problems)
                         + ". Is it a checkpoint of another model? Pass the matching --model.")
    model.load_state_dict(sd, strict=True)
    return predictors


@dataclass
class LoadedModel:
    """A timm model ready for inference and where its weights came from.

    Attributes:
        model: the timm model, eval mode, on the requested device and dtype.
        weights: one line saying which weights were loaded (print it).
        predictor_state: DynamicViT predictor weights found in ``--checkpoint`` (keys without the
            ``score_predictor.`` prefix), or None.
    """

    model: torch.nn.Module
    weights: str
    predictor_state: dict[str, torch.Tensor] | None = None


def load_model(name: str, *, weights: str = "auto", checkpoint: str | None = None,
               device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
               probe_timeout: float = 3.0) -> LoadedModel:
    """Create timm model ``name`` in eval mode on ``device``/``dtype``.

    ``checkpoint`` wins over ``weights``. ``weights="pretrained"`` raises :class:`UsageError` when timm's
    weights are neither cached nor downloadable; ``"auto"`` then prints a notice and uses random weights.
    The returned :class:`LoadedModel` says which weights were loaded, for the caller to print.
    """
    import timm

    check_model_name(name)
    predictors = None
    if checkpoint is not None:
        sd = load_state_dict_file(checkpoint)  # file problems first, before building the model
        model = timm.create_model(name, pretrained=False)
        predictors = load_checkpoint_into(model, sd, checkpoint, name) or None
        note = f"checkpoint {checkpoint}" + (" (with DynamicViT predictors)" if predictors else "")
    elif weights == "random":
        model = timm.create_model(name, pretrained=False)
        note = "RANDOM weights (--weights random): predictions are meaningless"
    else:
        model, note = _pretrained_or_random(name, weights, probe_timeout)
    from ..models import check_model

    try:
        check_model(model)
    except ValueError as e:
        raise UsageError(f"--model {name}: {str(e).removeprefix('prune: ')}") from None
    if predictors is not None:
        predictors = {k: v.to(device=device, dtype=dtype) for k, v in predictors.items()}
    return LoadedModel(model.to(device=device, dtype=dtype).eval(), note, predictors)


def _pretrained_or_random(name: str, weights: str, probe_timeout: float) -> tuple[torch.nn.Module, str]:
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    cfg = cfg.to_dict() if cfg is not None else {}
    cached = _cached_pretrained_file(cfg)
    reason = None
    try:
        if cached:
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": cached})
            return model, f"timm pretrained ({cfg.get('hf_hub_id') or cfg.get('url')}, from the local cache)"
        reason = _hub_unreachable_reason(probe_timeout)
        if reason is None:
            model = timm.create_model(name, pretrained=True)
            return model, f"timm pretrained ({cfg.get('hf_hub_id') or cfg.get('url')})"
    except Exception as e:  # download or file errors: reported, never hidden
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if weights == "pretrained":
        raise UsageError(f"--weights pretrained: timm's weights for {name} are not available ({reason}); "
                         "pass --checkpoint PATH with a local copy")
    print(f"NOTICE: timm's pretrained weights for {name} could not be loaded ({reason}).\n"
          "        Using RANDOM weights: predictions are meaningless. Pass --checkpoint PATH with a local copy "
          "of the weights for real predictions.", flush=True)
    return timm.create_model(name, pretrained=False), "RANDOM weights (pretrained not reachable)"


def synchronize(device: torch.device) -> None:
    """Wait for queued work on ``device`` (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_median(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls, synchronizing each time."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def environment(device: torch.device) -> dict[str, str]:
    """Versions, device name, date and command line, for printed headers and JSON results."""
    import timm

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:  # pragma: no cover - triton is a dependency
        triton_version = "not installed"
    if device.type == "cuda":
        dev = torch.cuda.get_device_name(device)
    else:
        dev = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return {"device": dev, "torch": torch.__version__, "triton": triton_version, "timm": timm.__version__,
            "python": platform.python_version(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]) if sys.argv else ""}

"""A timm model with its weights, for the commands: pretrained, a ``--checkpoint`` file, or random.

``--checkpoint PATH`` loads a local file (timm key names; ``.safetensors`` or a torch pickle, a ``{"model": ...}``,
``{"state_dict": ...}`` or ``{"model_ema": ...}`` wrapper and a ``module.`` prefix are accepted) strictly: missing,
unexpected and mis-shaped keys raise :class:`~.errors.UsageError` naming them. DynamicViT predictor keys
(``score_predictor.*``) are returned apart for the pruned model. Otherwise timm's pretrained weights are used when
they are in the local cache or the hub answers; with ``weights="auto"`` an unreachable hub gives a printed notice
and random weights.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from .errors import UsageError

WEIGHT_CHOICES = ("auto", "pretrained", "random")
PREDICTOR_PREFIX = "score_predictor."  # DynamicViT keep predictors in an official checkpoint


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
               device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, img_size: int | None = None,
               probe_timeout: float = 3.0) -> LoadedModel:
    """Create timm model ``name`` in eval mode on ``device``/``dtype``.

    ``checkpoint`` wins over ``weights``. ``weights="pretrained"`` raises :class:`UsageError` when timm's
    weights are neither cached nor downloadable; ``"auto"`` then prints a notice and uses random weights.
    ``img_size`` builds the model for another input size (timm resamples pretrained position embeddings).
    The returned :class:`LoadedModel` says which weights were loaded, for the caller to print.
    """
    import timm

    check_model_name(name)
    kwargs = {} if img_size is None else {"img_size": img_size}
    predictors = None
    if checkpoint is not None:
        sd = load_state_dict_file(checkpoint)  # file problems first, before building the model
        model = timm.create_model(name, pretrained=False, **kwargs)
        predictors = load_checkpoint_into(model, sd, checkpoint, name) or None
        note = f"checkpoint {checkpoint}" + (" (with DynamicViT predictors)" if predictors else "")
    elif weights == "random":
        model = timm.create_model(name, pretrained=False, **kwargs)
        note = "RANDOM weights (--weights random): predictions are meaningless"
    else:
        model, note = _pretrained_or_random(name, weights, probe_timeout, kwargs)
    from ..models import check_model

    try:
        check_model(model)
    except ValueError as e:
        raise UsageError(f"--model {name}: {str(e).removeprefix('prune: ')}") from None
    if predictors is not None:
        predictors = {k: v.to(device=device, dtype=dtype) for k, v in predictors.items()}
    return LoadedModel(model.to(device=device, dtype=dtype).eval(), note, predictors)


def _pretrained_or_random(name: str, weights: str, probe_timeout: float,
                          kwargs: dict) -> tuple[torch.nn.Module, str]:
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    cfg = cfg.to_dict() if cfg is not None else {}
    cached = _cached_pretrained_file(cfg)
    reason = None
    try:
        if cached:
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": cached},
                                      **kwargs)
            return model, f"timm pretrained ({cfg.get('hf_hub_id') or cfg.get('url')}, from the local cache)"
        reason = _hub_unreachable_reason(probe_timeout)
        if reason is None:
            model = timm.create_model(name, pretrained=True, **kwargs)
            return model, f"timm pretrained ({cfg.get('hf_hub_id') or cfg.get('url')})"
    except Exception as e:  # download or file errors: reported, never hidden
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if weights == "pretrained":
        raise UsageError(f"--weights pretrained: timm's weights for {name} are not available ({reason}); "
                         "pass --checkpoint PATH with a local copy")
    print(f"NOTICE: timm's pretrained weights for {name} could not be loaded ({reason}).\n"
          "        Using RANDOM weights: predictions are meaningless. Pass --checkpoint PATH with a local copy "
          "of the weights for real predictions.", flush=True)
    return timm.create_model(name, pretrained=False, **kwargs), "RANDOM weights (pretrained not reachable)"

"""The project's sample data: a trained ViT-Tiny and 500 labelled ImageNet photos (``../shared/data``).

The data is not part of the repository. :func:`locate` finds its root: the directory named by the
environment variable ``RAGGEDVIT_DATA``, else ``../shared/data`` beside the repository (or beside the
current directory). Layout (see the data's own README)::

    weights/vit_tiny_patch16_224.augreg_in21k_ft_in1k.safetensors   timm key names, fp32, loads strict
    imagenet-sample/<synset>/<synset>_<name>.JPEG                   one photo for each of 500 classes

Labels are ImageNet-1k class indices: the synset's position in the sorted list of all 1,000 synsets
(timm's offline ``ImageNetInfo``), not an enumeration of the 500 folders. Images go through the model's
own timm eval transform (mean = std = 0.5, bicubic, crop 0.9 for this model).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import torch

__all__ = ["ENV_VAR", "MODEL_NAME", "locate", "missing_reason", "load_model", "sample_files", "load_images"]

ENV_VAR = "RAGGEDVIT_DATA"
MODEL_NAME = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
WEIGHTS = Path("weights") / f"{MODEL_NAME}.safetensors"
IMAGES = Path("imagenet-sample")
_REPO = Path(__file__).resolve().parents[2]  # src/raggedvit/sample_data.py -> the repository root


def _candidates() -> list[Path]:
    env = os.environ.get(ENV_VAR)
    if env:
        return [Path(env)]
    return list(dict.fromkeys(p.resolve() for p in (_REPO / ".." / "shared" / "data", Path.cwd() / ".." / "shared"
                                                     / "data")))


def _complete(root: Path) -> bool:
    return (root / WEIGHTS).is_file() and (root / IMAGES).is_dir()


def locate() -> Path | None:
    """The data root (holding ``weights/`` and ``imagenet-sample/``), or None when it is missing."""
    return next((p for p in _candidates() if _complete(p)), None)


def missing_reason() -> str:
    """Why :func:`locate` returns None (which paths were tried and what each lacks)."""
    tried = ", ".join(f"{p} ({'no ' + str(WEIGHTS) if not (p / WEIGHTS).is_file() else 'no ' + str(IMAGES)})"
                      for p in _candidates())
    how = f"${ENV_VAR}" if os.environ.get(ENV_VAR) else f"${ENV_VAR} unset; ../shared/data"
    return f"sample data not found ({how}): tried {tried}"


def _root(root: str | Path | None) -> Path:
    if root is not None:
        return Path(root)
    found = locate()
    if found is None:
        raise FileNotFoundError(missing_reason())
    return found


def load_model(root: str | Path | None = None) -> torch.nn.Module:
    """The trained timm ``vit_tiny_patch16_224.augreg_in21k_ft_in1k`` (fp32, CPU, eval), loaded strictly."""
    import timm
    from safetensors.torch import load_file

    path = _root(root) / WEIGHTS
    model = timm.create_model(MODEL_NAME, pretrained=False)
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.eval()


@lru_cache(maxsize=1)
def _synset_index() -> dict[str, int]:
    from timm.data import ImageNetInfo

    names = ImageNetInfo().label_names()
    if len(names) != 1000 or list(names) != sorted(names):  # pragma: no cover - a timm change
        raise RuntimeError("timm's ImageNet-1k synset list is not the sorted list of 1,000 synsets")
    return {name: i for i, name in enumerate(names)}


def sample_files(root: str | Path | None = None) -> list[tuple[Path, int]]:
    """``[(path, ImageNet-1k class index), ...]`` of every sample photo, sorted by synset then file name."""
    index = _synset_index()
    folder = _root(root) / IMAGES
    files = []
    for d in sorted(p for p in folder.iterdir() if p.is_dir()):
        if d.name not in index:
            raise ValueError(f"{d}: not an ImageNet-1k synset")
        files += [(f, index[d.name]) for f in sorted(d.iterdir()) if f.suffix.lower() in (".jpeg", ".jpg", ".png")]
    return files


def load_images(model: torch.nn.Module, indices=None, root: str | Path | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images (N, 3, H, W) fp32, labels (N,) int64)``: the sample photos at positions ``indices`` of
    :func:`sample_files` (default: all), through ``model``'s timm eval transform."""
    import timm.data
    from PIL import Image

    files = sample_files(root)
    chosen = files if indices is None else [files[i] for i in indices]
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model), is_training=False)
    images = []
    for path, _ in chosen:
        with Image.open(path) as im:
            images.append(transform(im.convert("RGB")))
    return torch.stack(images), torch.tensor([label for _, label in chosen], dtype=torch.int64)

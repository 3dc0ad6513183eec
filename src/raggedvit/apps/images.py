"""Images for the product commands: image folders, ImageNet class names, pictures.

(scikit-image's bundled photos are in :mod:`raggedvit.runtime.photos`, shared with ``bench exactness``.)

* :func:`scan_folder` - an ImageFolder tree (class folders named by ImageNet synset id, e.g. ``n01440764``,
  give labels; other names give unlabelled images) or a flat folder of images.
* :class:`ImageFiles` + :func:`collate_images` - a map-style dataset for a ``torch.utils.data.DataLoader``
  with worker processes; an unreadable file never crashes a worker: it comes back as an error message in the
  batch, so the main process can name the file (or skip it when asked).
* :class:`FileBytes` + :func:`collate_bytes` - the same for ``--decode gpu``: worker processes only read the
  files; :class:`TensorEvalTransform` decodes JPEGs in one ``torchvision.io.decode_jpeg`` call on the GPU (other
  formats, and JPEGs nvJPEG refuses, on the CPU) and applies timm's eval transform to the decoded tensors on
  the device (bicubic antialiased resize of the short side to ``size / crop_pct``, centre crop, mean/std).
  It matches timm's PIL transform to within a few 1/255 steps (resampling rounding, JPEG IDCT); see
  ``tests/test_apps_eval.py``.
* :func:`class_names` / :func:`synset_indices` - ImageNet-1k names from timm's offline metadata.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch

from ..runtime.errors import UsageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff", ".gif")


@lru_cache(maxsize=1)
def _imagenet_info():
    from timm.data import ImageNetInfo

    return ImageNetInfo()


def class_names() -> list[str]:
    """Short ImageNet-1k class names by index (``"tench"``, ``"goldfish"``, ...), from timm, offline."""
    info = _imagenet_info()
    return [info.index_to_description(i).split(",")[0] for i in range(info.num_classes())]


def synset_indices() -> dict[str, int]:
    """ImageNet-1k synset id -> class index (``{"n01440764": 0, ...}``)."""
    return {name: i for i, name in enumerate(_imagenet_info().label_names())}


@dataclass
class FolderIndex:
    """The images of a ``--data`` folder.

    Attributes:
        root: the folder.
        paths: image files, sorted.
        labels: ImageNet class index per image when the class folders are synset ids, else None.
        layout: ``"class folders"`` or ``"flat"``.
        notes: sentences to print (how labels were read, what was ignored).
    """

    root: Path
    paths: list[Path]
    labels: list[int] | None
    layout: str
    notes: list[str] = field(default_factory=list)


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def scan_folder(root: str | Path, limit: int | None = None) -> FolderIndex:
    """Index an ImageFolder tree or a flat image folder; :class:`UsageError` when there is nothing to read.

    Class-folder layout (any sub-folder holds images): every sub-folder is a class, searched recursively.
    Labels are ImageNet indices when *every* class folder name is a synset id; otherwise the images are
    unlabelled (agreement only). ``limit`` keeps a fixed pseudo-random subset (seed 0) of that many images.
    """
    root = Path(root)
    if not root.exists():
        raise UsageError(f"--data {root}: no such folder")
    if not root.is_dir():
        raise UsageError(f"--data {root}: not a folder (pass a folder of images or an ImageFolder tree)")
    try:
        entries = sorted(root.iterdir())
    except OSError as e:
        raise UsageError(f"--data {root}: cannot read the folder ({e.strerror or e})") from None
    subdirs = [d for d in entries if d.is_dir() and not d.name.startswith(".")]
    top_images = [p for p in entries if _is_image(p)]
    classes = {d.name: sorted(p for p in d.rglob("*") if _is_image(p)) for d in subdirs}
    classes = {k: v for k, v in classes.items() if v}
    notes: list[str] = []
    if classes:
        synsets = synset_indices()
        paths = [p for k in sorted(classes) for p in classes[k]]
        not_synsets = [k for k in sorted(classes) if k not in synsets]
        if not_synsets:
            labels = None
            notes.append(f"{len(not_synsets)} of {len(classes)} class folder name(s) are not ImageNet synset ids "
                         f"(e.g. {', '.join(not_synsets[:3])}): no top-1, agreement with the dense model only")
        else:
            labels = [synsets[k] for k in sorted(classes) for _ in classes[k]]
            notes.append(f"{len(classes)} class folder(s) named by ImageNet synset id: top-1 against those labels")
        if top_images:
            notes.append(f"{len(top_images)} image(s) directly in {root} ignored (class-folder layout)")
        layout = "class folders"
    elif top_images:
        paths, labels, layout = top_images, None, "flat"
        notes.append("flat folder (no class folders): no top-1, agreement with the dense model only")
    else:
        raise UsageError(f"--data {root}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)} files in it "
                         "and in its sub-folders)")
    if limit is not None and limit < len(paths):
        if limit < 1:
            raise UsageError(f"--limit {limit}: must be at least 1")
        keep = sorted(torch.randperm(len(paths), generator=torch.Generator().manual_seed(0))[:limit].tolist())
        paths = [paths[i] for i in keep]
        labels = [labels[i] for i in keep] if labels is not None else None
        notes.append(f"--limit {limit}: a fixed pseudo-random subset (seed 0)")
    return FolderIndex(root, paths, labels, layout, notes)


class ImageFiles(torch.utils.data.Dataset):
    """Images from files through ``transform``; item ``i`` is ``(tensor or None, label, i, error or None)``.

    ``label`` is -1 for unlabelled images. A file PIL cannot decode yields ``None`` and an error message
    naming the file, so that worker processes never die on a bad file.
    """

    def __init__(self, paths: list[Path], labels: list[int] | None, transform=None):
        self.paths = list(paths)
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, path: Path):
        """The item's data: the transformed image (raises PIL's decode errors)."""
        from PIL import Image

        with Image.open(path) as img:
            return self.transform(img.convert("RGB"))

    def __getitem__(self, i: int):
        label = self.labels[i] if self.labels is not None else -1
        path = self.paths[i]
        try:
            return self.load(path), label, i, None
        except (OSError, ValueError, SyntaxError) as e:  # PIL's decode errors, unreadable or empty files
            return None, label, i, f"{path}: {type(e).__name__}: {e}"


@dataclass
class ImageBatch:
    """A collated batch: ``images (B, 3, H, W)`` or None when every file failed, labels and indices ``(B,)``,
    and one message per unreadable file."""

    images: torch.Tensor | None
    labels: torch.Tensor
    indices: torch.Tensor
    errors: list[str]

    def pin_memory(self) -> ImageBatch:
        """Page-locked copy of the images (``DataLoader(pin_memory=True)`` calls this)."""
        images = self.images.pin_memory() if self.images is not None else None
        return ImageBatch(images, self.labels, self.indices, self.errors)


def collate_images(items) -> ImageBatch:
    """``DataLoader`` collate function for :class:`ImageFiles`: stacks readable images, collects errors."""
    good = [it for it in items if it[0] is not None]
    errors = [it[3] for it in items if it[0] is None]
    images = torch.stack([it[0] for it in good]) if good else None
    labels = torch.tensor([it[1] for it in good], dtype=torch.long)
    indices = torch.tensor([it[2] for it in good], dtype=torch.long)
    return ImageBatch(images, labels, indices, errors)


class FileBytes(ImageFiles):
    """Raw file contents for on-device decoding; item ``i`` is ``(uint8 (n,) tensor or None, label, i, error)``."""

    def load(self, path: Path) -> torch.Tensor:
        data = path.read_bytes()
        if not data:
            raise ValueError("empty file")
        return torch.frombuffer(bytearray(data), dtype=torch.uint8)


@dataclass
class BytesBatch:
    """A collated :class:`FileBytes` batch: encoded files, labels and indices ``(B,)``, read errors."""

    data: list[torch.Tensor]
    labels: torch.Tensor
    indices: torch.Tensor
    errors: list[str]


def collate_bytes(items) -> BytesBatch:
    """``DataLoader`` collate function for :class:`FileBytes`."""
    good = [it for it in items if it[0] is not None]
    return BytesBatch([it[0] for it in good], torch.tensor([it[1] for it in good], dtype=torch.long),
                      torch.tensor([it[2] for it in good], dtype=torch.long), [it[3] for it in items if it[0] is None])


def _is_jpeg(data: torch.Tensor) -> bool:
    return data.numel() >= 3 and bool(data[0] == 0xFF) and bool(data[1] == 0xD8) and bool(data[2] == 0xFF)


class TensorEvalTransform:
    """timm's eval transform for a model (``resolve_data_config``) on decoded uint8 tensors, on any device.

    Same steps as ``timm.data.create_transform(**cfg)`` with ``crop_mode`` ``"center"`` (timm's default) or
    ``"squash"``: resize (torchvision's tensor resize, bicubic or bilinear, antialiased, in the uint8
    domain: rounded and clamped as PIL does) of the short side to ``floor(size / crop_pct)``, centre crop
    to ``size``, ``/ 255``, ``(x - mean) / std``. Images of the same size are resized in one call.

    Raises ValueError for a data config it does not reproduce (the caller then decodes on the CPU).
    """

    def __init__(self, cfg: dict) -> None:
        from torchvision.transforms import InterpolationMode

        self.size = tuple(int(v) for v in cfg["input_size"][1:])
        crop_pct = cfg.get("crop_pct") or 0.875
        self.mode = cfg.get("crop_mode") or "center"
        if self.mode not in ("center", "squash"):
            raise ValueError(f"crop_mode {self.mode!r} (on-device decoding reproduces 'center' and 'squash')")
        interp = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}.get(
            cfg.get("interpolation", "bilinear"))
        if interp is None:
            raise ValueError(f"interpolation {cfg.get('interpolation')!r} (on-device decoding reproduces bicubic and "
                             "bilinear)")
        self.interpolation = interp
        self.scale = tuple(math.floor(v / crop_pct) for v in self.size)
        if self.mode == "center" and self.scale[0] != self.scale[1]:
            raise ValueError(f"non-square input size {self.size} (on-device decoding reproduces square sizes)")
        self.mean = torch.tensor(cfg["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg["std"], dtype=torch.float32).view(1, 3, 1, 1)

    def _resize_size(self, h: int, w: int) -> list[int]:
        if self.mode == "squash":
            return list(self.scale)
        return [self.scale[0]]  # torchvision: the short side to this size, the long one int(size * long / short)

    def __call__(self, images: list[torch.Tensor], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``(B, 3, H, W)`` normalised images in ``dtype`` from ``images``, uint8 ``(3, h, w)`` on one device."""
        from torchvision.transforms.v2 import functional as TF

        if not images:
            raise ValueError("TensorEvalTransform: no images")
        device = images[0].device
        out = torch.empty(len(images), 3, *self.size, device=device, dtype=torch.float32)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            if img.dtype != torch.uint8 or img.dim() != 3 or img.shape[0] != 3:
                raise ValueError(f"TensorEvalTransform: image {i} is {img.dtype} {tuple(img.shape)}, expected uint8 "
                                 "(3, h, w)")
            groups.setdefault(tuple(img.shape[1:]), []).append(i)
        for (h, w), idx in groups.items():
            batch = torch.stack([images[i] for i in idx])
            batch = TF.resize(batch, self._resize_size(h, w), interpolation=self.interpolation, antialias=True)
            batch = TF.center_crop(batch, list(self.size))
            out[idx] = batch.float()
        mean, std = self.mean.to(device), self.std.to(device)
        return ((out / 255.0 - mean) / std).to(dtype)


def decode_images(data: list[torch.Tensor], device: torch.device,
                  names: list[str] | None = None) -> tuple[list[torch.Tensor | None], list[str | None]]:
    """Decode encoded files (uint8 CPU tensors) to RGB uint8 ``(3, h, w)`` tensors on ``device``.

    JPEGs go through one batched ``torchvision.io.decode_jpeg(..., device=device)`` call (nvJPEG on CUDA); if
    that batch fails, each JPEG is decoded on its own there, and anything still failing, or not a JPEG (PNG,
    ...), is decoded on the CPU (``torchvision.io.decode_image``) and moved. Returns ``(images, errors)``:
    per file the image or None, and None or a message (naming ``names[i]``) for files nothing can decode.
    """
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    names = names if names is not None else [f"image {i}" for i in range(len(data))]
    images: list[torch.Tensor | None] = [None] * len(data)
    errors: list[str | None] = [None] * len(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision >= 0.29: decoding is deprecated in favour of TorchCodec
        jpegs = [i for i, d in enumerate(data) if _is_jpeg(d)]
        if jpegs:
            try:
                for i, img in zip(jpegs, decode_jpeg([data[i] for i in jpegs], mode=ImageReadMode.RGB,
                                                     device=device)):
                    images[i] = img
            except RuntimeError:
                for i in jpegs:
                    try:
                        images[i] = decode_jpeg(data[i], mode=ImageReadMode.RGB, device=device)
                    except RuntimeError:
                        pass
        for i, d in enumerate(data):
            if images[i] is None:
                try:
                    img = decode_image(d, mode=ImageReadMode.RGB)
                    images[i] = (img[0] if img.dim() == 4 else img).to(device)  # animated: the first frame
                except (RuntimeError, ValueError) as e:
                    errors[i] = f"{names[i]}: cannot decode ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
    return images, errors


def denormalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """Undo the model's input normalisation: ``(B, 3, H, W)`` -> float in [0, 1], for pictures."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (images.float().cpu() * s + m).clamp(0, 1)

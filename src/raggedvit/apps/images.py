"""Images for the product commands: image folders, ImageNet class names, pictures.

(scikit-image's bundled photos are in :mod:`raggedvit.runtime.photos`, shared with ``bench exactness``.)

* :func:`scan_folder` - an ImageFolder tree (class folders named by ImageNet synset id, e.g. ``n01440764``,
  give labels; other names give unlabelled images) or a flat folder of images.
* :class:`ImageFiles` + :func:`collate_images` - a map-style dataset for a ``torch.utils.data.DataLoader``
  with worker processes; an unreadable file never crashes a worker: it comes back as an error message in the
  batch, so the main process can name the file (or skip it when asked).
* :func:`class_names` / :func:`synset_indices` - ImageNet-1k names from timm's offline metadata.
"""

from __future__ import annotations

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

    def __init__(self, paths: list[Path], labels: list[int] | None, transform):
        self.paths = list(paths)
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        label = self.labels[i] if self.labels is not None else -1
        path = self.paths[i]
        try:
            with Image.open(path) as img:
                return self.transform(img.convert("RGB")), label, i, None
        except (OSError, ValueError, SyntaxError) as e:  # PIL's decode errors
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


def denormalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """Undo the model's input normalisation: ``(B, 3, H, W)`` -> float in [0, 1], for pictures."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (images.float().cpu() * s + m).clamp(0, 1)

"""Images from the colour photos scikit-image ships (no download needed).

* :func:`load_demo_photos` - the photos themselves (``raggedvit demo``).
* :func:`make_images` - many distinct model inputs from them: the photos, their mirror images and seeded
  random-resized crops (``raggedvit bench exactness``).
"""

from __future__ import annotations

import hashlib
import math

import torch

from .errors import UsageError

# name -> scikit-image loader name (all colour photographs shipped inside the scikit-image wheel; not its ``cat``,
# which is ``chelsea`` again)
DEMO_PHOTOS = {
    "astronaut": "astronaut",
    "chelsea": "chelsea",
    "coffee": "coffee",
    "rocket": "rocket",
    "motorcycle": "stereo_motorcycle",
}
CROP_SCALES = ((0.08, 0.25), (0.25, 0.5), (0.5, 0.8), (0.8, 1.0))  # random-resized-crop area buckets


def load_demo_photos(names: list[str] | None = None) -> list[tuple[str, object]]:
    """``[(name, PIL RGB image), ...]`` for the bundled photos ``names`` (default: all of :data:`DEMO_PHOTOS`).

    A photo that this scikit-image version cannot load is skipped with a printed notice; unknown names
    raise :class:`UsageError` listing the valid ones.
    """
    from PIL import Image
    from skimage import data

    names = list(DEMO_PHOTOS) if not names else names
    unknown = [n for n in names if n not in DEMO_PHOTOS]
    if unknown:
        raise UsageError(f"unknown photo(s) {', '.join(unknown)}; valid: {', '.join(DEMO_PHOTOS)}")
    photos = []
    for name in names:
        try:
            array = getattr(data, DEMO_PHOTOS[name])()
        except Exception as e:  # a photo that needs a download in this scikit-image version
            print(f"NOTICE: skipping photo {name!r}: scikit-image could not load it ({type(e).__name__}: {e})")
            continue
        if isinstance(array, tuple):  # stereo pairs: the left view
            array = array[0]
        photos.append((name, Image.fromarray(array).convert("RGB")))
    if not photos:
        raise UsageError("none of the requested photos could be loaded from scikit-image")
    return photos


def make_images(n: int, data_cfg: dict, *, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """``(images (n, 3, H, W) float32, descriptions)``: ``n`` distinct images from scikit-image's photos.

    Order: each photo through timm's eval transform (resize, centre crop), then its mirror image, then
    random-resized crops (area fraction from :data:`CROP_SCALES` in turn, aspect ratio in [3/4, 4/3],
    flipped with probability 1/2) drawn from a ``torch.Generator`` seeded with ``seed``, cycling over the
    photos. ``data_cfg`` is timm's ``resolve_data_config`` dict (``input_size``, ``mean``, ``std``,
    ``interpolation``, ``crop_pct``). Deterministic for a given seed and scikit-image version; a prefix
    of a longer call equals a shorter call.
    """
    from PIL import Image
    from timm.data import create_transform

    if n < 1:
        raise UsageError(f"need at least 1 image, got {n}")
    H, W = data_cfg["input_size"][1:]
    eval_tf = create_transform(**{k: data_cfg[k] for k in ("input_size", "mean", "std", "interpolation",
                                                            "crop_pct")})
    crop_tf = create_transform(input_size=data_cfg["input_size"], mean=data_cfg["mean"], std=data_cfg["std"],
                               interpolation=data_cfg["interpolation"], crop_pct=1.0)  # exact resize only
    photos = load_demo_photos()
    flip = Image.Transpose.FLIP_LEFT_RIGHT
    gen = torch.Generator().manual_seed(seed)
    out: list[torch.Tensor] = []
    names: list[str] = []
    seen: set[bytes] = set()

    def add(t: torch.Tensor, name: str) -> None:
        key = hashlib.sha1(t.numpy().tobytes()).digest()
        if key not in seen:
            seen.add(key)
            out.append(t)
            names.append(name)

    for name, img in photos:
        add(eval_tf(img), name)
        add(eval_tf(img.transpose(flip)), f"{name} flipped")
    k = 0
    while len(out) < n:
        if k > 100 * n:  # pragma: no cover - crops are continuous draws
            raise RuntimeError("could not generate enough distinct images")
        name, img = photos[k % len(photos)]
        lo, hi = CROP_SCALES[(k // len(photos)) % len(CROP_SCALES)]
        u = torch.rand(5, generator=gen).tolist()
        area = img.width * img.height * (lo + (hi - lo) * u[0])
        ratio = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[1])
        w = min(img.width, max(16, round(math.sqrt(area * ratio))))
        h = min(img.height, max(16, round(math.sqrt(area / ratio))))
        x0, y0 = round((img.width - w) * u[2]), round((img.height - h) * u[3])
        crop = img.crop((x0, y0, x0 + w, y0 + h)).resize((W, H), Image.Resampling.BICUBIC)
        flipped = u[4] < 0.5
        add(crop_tf(crop.transpose(flip) if flipped else crop),
            f"{name} crop {w}x{h}+{x0}+{y0}" + (" flipped" if flipped else ""))
        k += 1
    return torch.stack(out[:n]), names[:n]

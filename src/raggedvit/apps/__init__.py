"""The product commands: ``raggedvit demo`` (bundled photos through every pruning method) and ``raggedvit eval``
(top-1, agreement with the dense model, kept tokens and speed over an image folder).

Modules: :mod:`.runtime` (device, dtype, attention backend, weights, user-facing errors), :mod:`.images`
(bundled photos, image folders, ImageNet class names), :mod:`.methods` (building pruned models and
calibrating thresholds), :mod:`.figures` (kept-patch pictures), :mod:`.demo`, :mod:`.evaluate`.
Heavy libraries (timm, matplotlib, scikit-image) are imported inside functions so ``raggedvit --help``
stays fast.
"""

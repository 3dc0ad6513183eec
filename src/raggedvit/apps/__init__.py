"""The product commands: ``raggedvit demo`` (bundled photos through every pruning method) and ``raggedvit eval``
(top-1, agreement with the dense model, kept tokens and speed over an image folder).

Modules: :mod:`.images` (image folders, ImageNet class names), :mod:`.figures` (kept-patch pictures),
:mod:`.demo`, :mod:`.evaluate`. Device, dtype, weights, pruned models, bundled photos and user-facing errors
come from :mod:`raggedvit.runtime`, shared with the benchmarks.
Heavy libraries (timm, matplotlib, scikit-image) are imported inside functions so ``raggedvit --help``
stays fast.
"""

"""What the ``raggedvit`` commands share; :mod:`raggedvit.apps` and :mod:`raggedvit.bench` build on it.

* :mod:`.errors` - :class:`~.errors.UsageError` and :func:`~.errors.run_command` (one ``error:`` line, status 2).
* :mod:`.device` - device, dtype and attention backend from the command line; ``synchronize``,
  ``time_median``, ``environment`` (what a result depends on: GPU, driver, versions, date, command).
* :mod:`.loading` - a timm model with its weights: pretrained, ``--checkpoint`` (loaded strictly, missing and
  unexpected keys named) or random.
* :mod:`.arguments` - argparse options several commands share, comma-separated lists.
* :mod:`.methods` - pruned models for the commands: method names, Threshold-L2 calibration, predictors.
* :mod:`.photos` - scikit-image's bundled photos and images generated from them.

Layer: above :mod:`raggedvit.models`, below ``apps`` and ``bench`` (it imports neither). Heavy libraries (timm,
PIL, scikit-image) are imported inside functions so that ``raggedvit --help`` stays fast. Importing this package
imports none of its modules.
"""

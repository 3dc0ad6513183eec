"""Benchmarks behind ``raggedvit bench`` and ``raggedvit report``.

:mod:`.timing` holds the shared primitives (host/device/graph timers, JSON output); :mod:`.attention` times
one attention call per backend; :mod:`.e2e` (grid, outputs) and :mod:`.e2e_point` (one grid point) time
whole forwards for every pipeline of the table in :mod:`.pipelines`; :mod:`.exactness` compares the layouts'
logits; :mod:`.report` turns results into plots and markdown. Device, dtype, weights, errors and the
environment come from :mod:`raggedvit.runtime`; nothing here imports :mod:`raggedvit.apps`. The command line
imports submodules on demand; importing this package imports nothing else.
"""

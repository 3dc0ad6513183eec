"""Benchmarks behind ``raggedvit bench`` and ``raggedvit report``.

:mod:`.timing` holds the shared primitives (host/device/graph timers, environment, JSON output);
:mod:`.attention` times one attention call per backend. The command line imports submodules on demand;
importing this package imports nothing else.
"""

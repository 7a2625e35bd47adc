"""The command line's tools: ``doctor``, ``demo`` and ``bench``.

Nothing in the package imports them but :mod:`aioray_runner.cli` (and the
``aioray_runner.demo`` entry point, which re-exports the demo).
"""

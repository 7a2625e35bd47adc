"""The measurements behind ``aioray-runner bench`` and the scripts in ``benchmarks/``.

* :mod:`.common`: a local Ray of the benchmark's own, progress on stderr, tables;
* :mod:`.core`: ``Runtime`` against a plain async Ray actor;
* :mod:`.flows`: Prefect task runners on the same flows (imports Prefect);
* :mod:`.suite`: the scenarios ``aioray-runner bench`` runs, its JSON and table;
* :mod:`.plot`: the bar charts (matplotlib, the ``plot`` extra).

Private: the layout may change between releases. Nothing here is imported by
``import aioray_runner``.
"""

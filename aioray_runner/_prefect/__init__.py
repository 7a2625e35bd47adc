"""The Prefect adapter: the task runner, its future, the API bookkeeping, the
supervisor side of a task run, recovery, settled futures, transactions and
``remote_options``.

Uses the runtime's public names only, plus the few listed in
``tests/unit/test_house.py`` (``PREFECT_MAY_IMPORT``).
"""

"""The supervisor actor and its parts: intake, the start gate, calls and permits,
dependencies, the function table, log forwarding.

Runs in the supervisor's process; never imports the caller's side (``_caller``).
"""

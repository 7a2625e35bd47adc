"""What both sides share: settings, the message shapes and pickling, the watchdog.

Imports nothing of the package but :mod:`aioray_runner.errors`.
"""

"""The caller's side: the runtime façade, the pool and what it coordinates (the
call ledger, sending, polling, recovery after a death), futures, the I/O thread,
wake-ups of the caller's loops, placement and the Ray watch."""

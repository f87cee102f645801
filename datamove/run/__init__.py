"""The study folder's contract: its lock, the trainer's heartbeat and the readiness gate, members'
receipts, interrupts, and ``datamove status``, which reads it all from the folder alone."""

"""The sender process: one per user and destination on a host (``python -m mpsender._sender``)."""

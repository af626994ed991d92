"""The `memory://` driver: broker, result backend and mailbox inside one process.

- `broker`: `MemoryBroker`, queues in this process (tests, scripts, a single process).
- `results`: `MemoryBackend`, results in this process (`aqueue.drivers.local`).
- `mailbox`: topics and settings in this process.
"""

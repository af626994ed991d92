"""The `sqlite://` driver: broker, result backend and mailbox in one SQLite file.

- `database`: URL parsing and the off-loop connection both sides share.
- `wake`: cross-process wake-ups by Unix datagram socket, so nothing polls.
- `broker`: `SQLiteBroker`, leased messages in a table; `rows` checks what a claim reads.
- `beats`: heartbeats, so a dead worker's leases run out in seconds.
- `dead`: dead letters, kept under a cap.
- `mailbox`: topics and settings in the database.
- `results`: `SQLiteBackend`, results in a table.
"""

"""The worker: it consumes deliveries, runs their tasks and settles their messages.

- `lifecycle`: `Worker`: start, signals, the two-phase shutdown, heartbeats, what remote control
  sees.
- `dispatch`: one delivery's way from the broker to a slot: admission, isolation of redelivered
  messages, held tasks, and the `Job` that carries it.
- `runner`: running one job's task: check, run, store the outcome, settle the message.
- executors: `slots` (the worker's concurrency), `processes` and `child` (the process pool),
  `admission` (rate limits and semaphores before a slot), `isolation` (a suspect runs alone).
- `control`: the control plane's commands, as a worker answers them.
- `supervisor` and `recycle`: `--workers N`, and replacing a child after N tasks or M bytes.
- `loopwatch`, `runtimes`, `gc_tuning`: what a worker watches and tunes about itself.
"""

from .lifecycle import Worker

__all__ = ["Worker"]

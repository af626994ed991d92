"""The `redis://` driver (also `rediss://` and `unix://`): broker, results, mailbox, throttles.

- `client`: URLs, redis-py connections, errors and batching, shared by every part.
- `resp`: a lean pipelined client for the worker's hot path.
- `pubsub`: the result waiters' pub/sub connection (`mailbox.Channels` serves the mailbox and
  the semaphore; the two are to become one engine).
- `broker`: `RedisBroker`, streams per queue and priority; `consumer` claims from them.
- `scripts`: the Lua scripts every multi-step change to a queue runs in.
- `dead`: dead letters.
- `mailbox`: topics over pub/sub, settings in a hash.
- `throttle`: the global rate limiter and semaphore.
- `results`: `RedisBackend`, results in keys, waited for on pub/sub.
"""

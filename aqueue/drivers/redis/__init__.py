"""The Redis driver (`redis://`, `rediss://`, `unix://`, Sentinel, Cluster): all of it.

Broker, results, mailbox and throttles.

- `client`: URLs, redis-py connections, errors and batching, shared by every part.
- `resp`: a lean pipelined client for the worker's hot path.
- `sentinel`: `redis+sentinel://`, the primary found through the sentinels.
- `cluster`: `redis+cluster://`, the slot map and a lean client per node; `per_slot`: a
  consumer of several queues claims and blocks per queue's slot.
- `pubsub`: the result waiters' pub/sub connection (`mailbox.Channels` serves the mailbox and
  the semaphore; the two are to become one engine).
- `broker`: `RedisBroker`, streams per queue and priority; `consumer` claims from them.
- `scripts`: the Lua scripts every multi-step change to a queue runs in.
- `dead`: dead letters.
- `mailbox`: topics over pub/sub, settings in a hash.
- `throttle`: the global rate limiter and semaphore.
- `results`: `RedisBackend`, results in keys, waited for on pub/sub.
"""

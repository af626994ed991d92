"""The `amqp://` driver (also `amqps://`, `pyamqp://`): the RabbitMQ broker and `rpc://` results.

- `connection`: URLs, one reconnecting connection, errors; shared with `rpc`.
- `broker`: `AMQPBroker`; `topology` declares its queues and exchanges.
- `publisher`: confirmed publishing, coalesced.
- `consumer`: one channel per `consume()`; `frames` reads its deliveries in bulk.
- `running`: recording the start of a run on classic queues.
- `dead`: dead letters.
- `mailbox`: topics over an exchange, settings in a durable queue.
- `rpc`: `RPCBackend`, results sent back to the caller's reply queue.
"""

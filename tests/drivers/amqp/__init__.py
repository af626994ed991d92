"""The RabbitMQ driver: broker, frames, publisher, mailbox, rpc://, quorum queues, host lists."""

"""The Redis driver: Streams broker, client, scripts, throttles, Sentinel."""

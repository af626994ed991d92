"""Integrations with other frameworks: `aqueue.contrib.django`."""

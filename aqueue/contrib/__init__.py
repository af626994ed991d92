"""Integrations of aqueue with frameworks (`aqueue.contrib.django`)."""

"""Management commands of `aqueue.contrib.django`."""

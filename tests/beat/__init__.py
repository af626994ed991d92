"""Periodic tasks: schedules, entries, the scheduler, `aqueue beat`."""

"""Migrations of the `aqueue` Django app (`TaskResult`)."""

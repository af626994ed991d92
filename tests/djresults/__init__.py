"""A Django project for the `aqueue.contrib.django` result stores and Tasks backend tests."""

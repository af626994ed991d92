"""The web dashboard, in-process and in a real browser."""

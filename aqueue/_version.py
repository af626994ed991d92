"""The installed version of aqueue."""

__version__ = "0.1.0"

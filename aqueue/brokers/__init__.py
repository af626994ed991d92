"""Broker drivers, one module each, imported only when a URL with their scheme is used."""

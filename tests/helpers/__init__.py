"""Shared test helpers: services, subprocesses, CLI checks, loops.

Test modules import these; they never import one another.
"""

"""Tests of each driver, a folder per driver; every driver also passes tests/contract."""

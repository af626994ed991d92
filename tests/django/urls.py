"""The tests' URLs: the example's (the admin among them)."""

from proj.urls import urlpatterns

__all__ = ["urlpatterns"]

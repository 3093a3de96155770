"""Shared settings for every room of the project (api, worker, models, db)."""

from config.settings import Settings, get_settings

__all__ = ["Settings", "get_settings"]

"""Chalice blueprints: parse -> pydantic schema -> service -> response. Thin."""

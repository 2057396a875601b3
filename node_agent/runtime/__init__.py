"""Runtimes: how a model process is started, watched and stopped (process or container)."""

"""Importing this registers every tool (each module calls toolserver.registry.register)."""
import toolserver.session_tools  # noqa: F401

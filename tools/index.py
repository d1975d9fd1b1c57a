"""Importing this registers every tool (each module calls toolserver.registry.register)."""

"""Importing this registers every tool (each module calls toolserver.registry.register)."""
import toolserver.session_tools  # noqa: F401
import tools.watch.tool  # noqa: F401,E402
import tools.weight_diff  # noqa: F401,E402

"""Test helpers shared by every service's tests (real processes, real files, tiny models)."""

from .process import ServiceProcess, free_port, require_tool, tools_required

__all__ = ["ServiceProcess", "free_port", "require_tool", "tools_required"]

"""Plugins: how a recipe's names become objects (docs/architecture.md lists the modules)."""

from .parameters import KINDS
from .registry import PluginInfo, Provider, Registry, get_registry, plugin_code

__all__ = ["KINDS", "PluginInfo", "Provider", "Registry", "get_registry", "plugin_code"]

"""Plugins: how a recipe's names become objects.

- ``loading``: pluggy, the built-ins and the installed entry points, each plugin isolated
- ``registry``: every component with its provider; resolving names, validating, building
- ``parameters``: a factory's parameters (signature, validation, description) and ``KINDS``
- ``attribution``: a plugin's failure as one line that names it
"""

from .attribution import plugin_code
from .parameters import KINDS
from .registry import PluginInfo, Provider, Registry, get_registry

__all__ = ["KINDS", "PluginInfo", "Provider", "Registry", "get_registry", "plugin_code"]

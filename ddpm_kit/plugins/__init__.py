"""Plugins: how a recipe's names become objects.

- ``loading``: pluggy, the built-ins and the installed entry points, each plugin isolated
- ``registry``: every component with its provider; resolving names, validating, building; a
  plugin's failure as one line that names it (``plugin_code``)
- ``parameters``: a factory's parameters (signature, validation, description) and ``KINDS``
"""

from .parameters import KINDS
from .registry import PluginInfo, Provider, Registry, get_registry, plugin_code

__all__ = ["KINDS", "PluginInfo", "Provider", "Registry", "get_registry", "plugin_code"]

"""A plugin whose import fails, and one whose hook name is misspelled."""

import this_module_does_not_exist  # noqa: F401

"""Imports deferred until first use: for what Gradio imports but this app never uses.

Gradio imports pandas as it starts (for its DataFrame and plot components
and example caching); the page uses none of them, yet pandas holds 32 MB,
6% of a 512 MB dyno. A deferred module is imported for real the first time
any attribute of it is read, so code that does use it still works.
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
import types

log = logging.getLogger(__name__)


class DeferredModule(types.ModuleType):
    """Stands in for a module in ``sys.modules`` until an attribute of it is read."""

    _lock = threading.Lock()

    def __getattr__(self, attribute: str) -> object:
        return getattr(self._module(), attribute)

    def _module(self) -> types.ModuleType:
        with self._lock:
            module = self.__dict__.get("_real")
            if module is None:
                log.info("Importing %s, deferred until now", self.__name__)
                if sys.modules.get(self.__name__) is self:
                    del sys.modules[self.__name__]
                module = self.__dict__["_real"] = importlib.import_module(self.__name__)
            return module


def defer_import(name: str) -> None:
    """Have ``import name`` give a stand-in that imports the module when first used."""
    if name not in sys.modules:
        sys.modules[name] = DeferredModule(name)

"""Imports deferred until first use, or hidden: for what Gradio imports but this app never uses.

Gradio imports pandas as it starts (for its DataFrame and plot components
and example caching); the page uses none of them, yet pandas holds 32 MB,
6% of a 512 MB dyno. A deferred module is imported for real the first time
any attribute of it is read, so code that does use it still works.

Not ``importlib.util.LazyLoader``: on Python 3.11 every ``import pandas``
reads the module's ``__spec__``, and a lazy module loads on any attribute
read, so Gradio's own ``import pandas as pd`` would load it at once. Here
the stand-in carries the real spec (found without importing anything), so
``import`` and ``importlib.util.find_spec`` see an ordinary module, and only
a read of one of the module's own names imports it.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import threading
import types
from collections.abc import Iterator
from contextlib import contextmanager

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
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None:
        return  # not installed: ``import name`` fails as it would have
    stand_in = DeferredModule(name)
    stand_in.__spec__ = spec
    stand_in.__loader__ = spec.loader
    sys.modules[name] = stand_in


@contextmanager
def hidden(name: str) -> Iterator[None]:
    """``import name`` fails inside the block, as if it were not installed: for a module a
    library imports at its own import time only if it can, and this app does not want."""
    if name in sys.modules:
        yield
        return
    sys.modules[name] = None  # type: ignore[assignment]  # the import system's "not here"
    try:
        yield
    finally:
        if sys.modules.get(name, ...) is None:
            del sys.modules[name]

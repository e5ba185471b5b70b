"""Deferred imports: a stand-in until first use, then the real module."""

from __future__ import annotations

import subprocess
import sys

from classifier.assets import ROOT

PROBE = """
import importlib.util
import sys
from service.deferred import DeferredModule, defer_import
defer_import("fractions")
import fractions
assert isinstance(fractions, DeferredModule), type(fractions)
assert importlib.util.find_spec("fractions").name == "fractions"  # a library's "is it installed?"
assert isinstance(sys.modules["fractions"], DeferredModule)  # ... does not import it
assert "fractions" in sys.modules and isinstance(sys.modules["fractions"], DeferredModule)
half = fractions.Fraction(1, 2)
assert half + half == 1
assert not isinstance(sys.modules["fractions"], DeferredModule)
import fractions as again
assert again.Fraction is fractions.Fraction
print("ok")
"""


def test_a_deferred_module_is_imported_when_first_used() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"

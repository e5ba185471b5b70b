"""What a ``Classifier`` reports of its work, for whoever measures it.

The core knows nothing of metrics libraries: the service plugs an observer
that feeds Prometheus (``service.metrics``); scripts and tests get this
one, which ignores everything.
"""

from __future__ import annotations


class Observer:
    """Told the time of every decode and every model run, failed or not."""

    def decoded(self, seconds: float) -> None:
        """One image decoded and preprocessed (its wait for memory included)."""

    def inferred(self, seconds: float) -> None:
        """One caller's model run (its wait for the model included)."""

    def context(self) -> str:
        """What log lines written for the current caller carry (a request's id), so a
        decoder process's lines name the request too; ``-`` outside one."""
        return "-"

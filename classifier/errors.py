"""One error model for every surface that reports a failure.

Each error class says, once, what it means to the HTTP API (its status),
to the metrics (its outcome) and to the converter's command line (its exit
code), so no surface keeps a table of its own. Its message is for people:
the words of the library underneath go to the log, never into it.
"""


class ClassifierError(Exception):
    """A failure with a message a user can act on."""

    status: int = 500
    """The HTTP status the API answers with."""
    outcome: str = "error"
    """The ``outcome`` label of the request counter in ``/metrics``."""
    exit_code: int = 1
    """The exit code of ``convert_model.py`` and ``app.py``."""

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers that go with the answer (``Retry-After`` on a 503)."""
        return {}

    @property
    def server_fault(self) -> bool:
        """A 500: the server's fault, so its message is logged and the user gets the request id."""
        return self.status >= 500 and self.status != 503

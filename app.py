"""Serve the classifier: the Gradio page at ``/`` and the REST API beside it.

Settings come from environment variables, read and checked once here
(``python app.py --help`` lists them; ``setup.sh`` sets ``HOST`` and
``PORT`` for Heroku). A bad setting, a model that is missing or does not
match its metadata, or libraries whose internals changed stop the app with
one line and a non-zero exit, before any port is bound. Warming the model up
happens once the port is bound (``/readyz`` says when it is done); if it
fails, the app logs why and exits non-zero, so that Heroku restarts it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from typing import TYPE_CHECKING

from classifier.assets import EXAMPLE_PHOTOS
from classifier.errors import ClassifierError
from classifier.model import Classifier, ModelError
from service.deferred import defer_import, hidden
from service.feedback import Feedback
from service.metrics import PrometheusObserver
from service.request_id import configure_logging
from service.settings import Settings, help_text, load_settings

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("app")


def lighten_gradio() -> None:
    """Turn off what Gradio does by default that this page never uses, before importing it.

    After every page event Gradio summarises up to 10,000 past events with
    pandas (the summary feeds its monitoring dashboard, not served here):
    milliseconds of CPU per request, growing with the count, and 32 MB of
    pandas, which Gradio also imports eagerly. And Gradio imports the MCP SDK
    whenever it is installed (for its own MCP server, not used here: ours is
    ``service.agents``): 24 MB, and sse-starlette with it, which replaces
    uvicorn's signal handler that our draining relies on.
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing reported to Gradio
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", str(2**31))
    os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "100")
    defer_import("pandas")
    with hidden("mcp"):
        import gradio  # noqa: F401  (first imported here)


def build_app(classifier: Classifier, settings: Settings) -> FastAPI:
    """The REST API, the MCP tool if ``MCP=on``, and the page at ``/``, over ``classifier``.

    ``ClassifierError`` if the feedback store's settings cannot be used (checked before
    Gradio's seconds of imports) or the libraries' internals are not what the app relies on.
    """
    feedback = Feedback.from_settings(classifier, settings)
    lighten_gradio()
    from service import internals

    internals.check()

    from service.api import build_api
    from service.page import build_demo, mount

    api = build_api(classifier, metrics_token=settings.metrics_token, feedback=feedback)
    if settings.mcp:
        from service.agents import mount_agents

        mount_agents(api, classifier, settings.admission_timeout)
    # FEEDBACK=off: no controls; off for want of a database: the page says how to turn it on.
    page = build_demo(classifier, EXAMPLE_PHOTOS, feedback=feedback if settings.feedback else None)
    return mount(api, page, settings)


def parse_arguments(argv: list[str]) -> None:
    """Only ``--help``: everything else is set by environment variables."""
    argparse.ArgumentParser(
        description="Serve the image classifier: the page at / and the REST API "
        "(POST /classify, /healthz, /readyz, /metrics, /docs).",
        epilog=f"settings (environment variables):\n{help_text()}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    parse_arguments(sys.argv[1:] if argv is None else argv)
    configure_logging()
    try:
        settings = load_settings()
        classifier = Classifier(
            settings.model_path,
            settings.session(),
            admission=settings.admission(),
            warm=False,
            observer=PrometheusObserver(),
            isolate=True,
        )
        # Gradio takes seconds to import: a broken model is reported before that.
        app = build_app(classifier, settings)
    except ClassifierError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code

    from service.server import GracefulServer

    server = GracefulServer(app, settings)
    failure: list[ModelError] = []

    def warm_up() -> None:
        try:
            classifier.warm_up()
        except Exception as error:
            log.exception("The model's first run failed: stopping, for a restart")
            failure.append(ModelError(f"The model's first run failed ({type(error).__name__})."))
            server.stop()

    threading.Thread(target=warm_up, name="warm-up", daemon=True).start()
    server.run()
    if failure:
        print(f"error: {failure[0]}", file=sys.stderr)
        return failure[0].exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The web service over the core: HTTP API, page, server and draining, settings, metrics.

It imports ``classifier``; ``classifier`` never imports it.
"""

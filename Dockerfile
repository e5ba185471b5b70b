# The app as an OCI image, for any host that runs a container on $PORT
# (Cloud Run, Fly.io, Render, Railway, Kubernetes, Heroku Fir).
#   docker build -t slim-inception .        (models/ must hold the model to serve)
#   docker run -p 8080:8080 slim-inception
# BASE may name another Python 3.11 image with the same layout.
ARG BASE=python:3.11-slim

# --- builder: the runtime's lock, hashes required, slimmed as on Heroku -------
FROM ${BASE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/venv/bin:$PATH
RUN python -m venv /venv
COPY requirements.txt /build/
RUN pip install --quiet --require-hashes -r /build/requirements.txt \
    && pip check \
    && pip uninstall --quiet --yes pip setuptools
COPY bin/post_compile /build/
RUN /build/post_compile

# --- runtime: the venv, the app and its models; nothing to build with ---------
FROM ${BASE}
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin app
COPY --from=builder /venv /venv
WORKDIR /app
# .dockerignore keeps out what .slugignore keeps out of Heroku's slug.
COPY . /app
# setup.sh (run by CMD, as by the Procfile) listens on 0.0.0.0 and sets the
# malloc tuning; PORT is 8080 unless the host sets it.
ENV PATH=/venv/bin:$PATH PORT=8080 PYTHONUNBUFFERED=1
USER app
EXPOSE 8080
# No curl in the image: the standard library asks /healthz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8080'), timeout=4)"]
# Exec form, the Procfile's command: bash execs python, which is then PID 1
# and gets `docker stop`'s SIGTERM itself: it drains and exits 0.
CMD ["bash", "-c", "source setup.sh && exec python app.py"]

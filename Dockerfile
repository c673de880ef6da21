# syntax=docker/dockerfile:1
# monkeytown-deploy: the watcher, a worker, or any CLI command, in one image.
#
#   docker build -t monkeytown-deploy .
#   docker run monkeytown-deploy config check
#   docker run -v state:/var/lib/monkeytown-deploy -v ./config.toml:/etc/monkeytown-deploy/config.toml:ro \
#       -e MONKEYTOWN_DEPLOY_REDIS_URL=redis://redis:6379/0 monkeytown-deploy watch
#   docker run ... monkeytown-deploy worker
#
# Both stages use the same base image, so the virtual environment built in the first one
# runs unchanged in the second.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/monkeytown-deploy
# Dependencies first, pinned by requirements.lock, so a code change reuses this layer.
COPY pyproject.toml requirements.lock README.md ./
COPY triggers/__init__.py triggers/
COPY monkeytown_deploy/__init__.py monkeytown_deploy/
RUN /opt/monkeytown-deploy/bin/pip install -c requirements.lock . \
    && /opt/monkeytown-deploy/bin/pip uninstall --yes monkeytown-deploy
COPY triggers/ triggers/
COPY watcher/ watcher/
COPY workers/ workers/
COPY monkeytown_deploy/ monkeytown_deploy/
# The package itself, with no dependency resolution: every dependency is already pinned in.
RUN /opt/monkeytown-deploy/bin/pip install --no-deps . \
    && /opt/monkeytown-deploy/bin/kubectl version --client

FROM ${PYTHON_IMAGE}
# git reads trigger files and renders overlays at the trigger's commit; tini reaps the git
# and work-horse children and forwards signals, which PID 1 would otherwise ignore.
# The base image tag fixes the Debian release; exact apt versions would stop the build at
# the next Debian security update, which removes the version they name from the archive.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends git tini ca-certificates openssh-client \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 monkeytown-deploy \
    && useradd --system --uid 10001 --gid monkeytown-deploy --no-create-home \
        --home-dir /var/lib/monkeytown-deploy --shell /usr/sbin/nologin monkeytown-deploy \
    && install --directory --owner monkeytown-deploy --group monkeytown-deploy --mode 0750 \
        /var/lib/monkeytown-deploy /etc/monkeytown-deploy
COPY --from=build /opt/monkeytown-deploy /opt/monkeytown-deploy
COPY --chown=root:root examples/monkeytown/config.toml /etc/monkeytown-deploy/config.toml

ENV PATH=/opt/monkeytown-deploy/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/monkeytown-deploy \
    MONKEYTOWN_DEPLOY_CONFIG=/etc/monkeytown-deploy/config.toml \
    MONKEYTOWN_DEPLOY_STATE_DIR=/var/lib/monkeytown-deploy \
    MONKEYTOWN_DEPLOY_LISTEN=0.0.0.0:9477
USER 10001:10001
WORKDIR /var/lib/monkeytown-deploy
VOLUME ["/var/lib/monkeytown-deploy"]
EXPOSE 9477

# The watcher and workers answer /health on the listen address; urllib keeps curl out of
# the image.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:9477/health', timeout=4)"]

ENTRYPOINT ["/usr/bin/tini", "--", "monkeytown-deploy"]
CMD ["watch"]

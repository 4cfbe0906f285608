# syntax=docker/dockerfile:1
# One image for every role: the CLI, the planner (`migrator plan` / `run`), the workers
# (`migrator worker`), Flower (`migrator flower`) and `migrator check-health` for probes.
#
#   docker build -t pacs-migrator:local .
#   docker run --rm pacs-migrator:local --help
#   docker run --rm -e MIGRATOR_REDIS_URL=redis://redis:6379/0 pacs-migrator:local worker -c 4
#
# Signals: `migrator worker` execs Celery, so in exec form (no shell, no init with -g) Celery
# is PID 1 and gets SIGTERM itself; with REMAP_SIGTERM=SIGQUIT (set by `migrator worker`) that
# is Celery's soft shutdown: running batches get MIGRATOR_SOFT_SHUTDOWN seconds (default 60),
# then go back to the queue at once. Give the container a stop grace period above that.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: compilers only here, in case a dependency has no wheel for the platform -------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/migrator \
 && /opt/migrator/bin/pip install --upgrade pip setuptools wheel
WORKDIR /src
# Dependencies first (cached while only the code changes), then the project itself.
COPY pyproject.toml README.md ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt \
 && /opt/migrator/bin/pip install -r /tmp/requirements.txt
COPY migrator ./migrator
COPY workers ./workers
# A regular (not editable) install; pip compiles the .pyc files now, since the root
# filesystem is read-only at run time.
RUN /opt/migrator/bin/pip install --no-deps . \
 && /opt/migrator/bin/python -m compileall -q /opt/migrator/lib
# The demo stack's S3 seeding step (compose/ and k8s/overlays/dev).
COPY compose/seed/seed_s3.py /opt/migrator/demo/seed_s3.py

# ---- runtime: the interpreter, the virtualenv, a non-root user; no compilers -----------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="pacs-migrator" \
      org.opencontainers.image.description="Distributed DICOM bulk migration: plan, send, rate-limit, account for every file."
RUN groupadd --system --gid 10001 migrator \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/migrator --create-home \
        --shell /usr/sbin/nologin migrator \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/migrator
COPY --from=build /opt/migrator /opt/migrator
ENV PATH=/opt/migrator/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/migrator \
    TMPDIR=/tmp
WORKDIR /home/migrator
USER 10001:10001
ENTRYPOINT ["migrator"]
CMD ["--help"]

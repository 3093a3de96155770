# One image for every app service (API, migrate, Flower, workers); see docker-compose.yml.
#   docker build -t lungct-app .                                  # CPU (API, Flower, CPU worker)
#   docker build --build-arg TF_EXTRA=and-cuda -t lungct-worker-gpu .   # GPU worker
# TF_EXTRA=and-cuda installs tensorflow[and-cuda] (pip-packaged CUDA/cuDNN) at the
# version pinned in requirements.txt; the host needs the NVIDIA driver + Container Toolkit.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, so code changes do not reinstall them.
ARG TF_EXTRA=""
COPY requirements.txt ./
RUN pip install -r requirements.txt \
 && if [ -n "$TF_EXTRA" ]; then \
        tf="$(grep -E '^tensorflow==' requirements.txt | sed "s/^tensorflow/tensorflow[$TF_EXTRA]/")"; \
        pip install "$tf"; \
    fi

# Unprivileged runtime user; it may write only to the uploads volume and var/.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/app app \
 && mkdir -p /data/uploads /app/var \
 && chown app:app /data/uploads /app/var

# Code (owned by root, read-only for the app user). .dockerignore keeps out
# .venv, var/, tests and caches.
COPY . .

USER app
ENV APP_ENV=production \
    API_HOST=0.0.0.0 \
    STORAGE_DIR=/data/uploads \
    MPLCONFIGDIR=/home/app/.cache/matplotlib

EXPOSE 8000 5555
CMD ["gunicorn", "-c", "python:api.gunicorn_conf", "api.wsgi:app"]

# One image for the API, the worker, the reaper and the one-shot migration; compose picks the command.
# The torch wheel from PyPI carries CUDA for the worker's GPU; the API never touches the GPU.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 1000 hydra
WORKDIR /app

# Dependencies first, so code changes do not reinstall torch.
COPY pyproject.toml README.md* ./
RUN test -f README.md || touch README.md; \
    mkdir -p core api worker service \
    && touch core/__init__.py api/__init__.py worker/__init__.py service/__init__.py \
    && pip install . \
    && pip uninstall -y hydra-compress

# The code, installed in place. migrations/ is a package (hydra-service migrate finds it wherever it is
# installed); alembic.ini is only for running `alembic` by hand in the container.
COPY core ./core
COPY api ./api
COPY worker ./worker
COPY service ./service
COPY hydra_client ./hydra_client
COPY launch ./launch
COPY migrations ./migrations
COPY alembic.ini ./
RUN pip install --no-deps -e . \
    && mkdir -p /app/var && chown -R hydra:hydra /app/var

USER hydra
EXPOSE 8000
CMD ["hydra-service", "api", "--host", "0.0.0.0", "--port", "8000"]

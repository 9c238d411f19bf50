# The rbmrec service image: the API (`rbmrec serve`), the worker (`rbmrec worker`) and the CLI.
# CPU build of torch by default; for a GPU image pass --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"

COPY pyproject.toml README.md alembic.ini ./
COPY rbm_core ./rbm_core
COPY service ./service
COPY migrations ./migrations
RUN pip install . && useradd --create-home --uid 1000 rbmrec
USER rbmrec

EXPOSE 8000
# DATABASE_URL must point at PostgreSQL (docker-compose.yml sets it).
CMD ["rbmrec", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]

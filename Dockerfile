# Omni image for docker-compose.kafka.yml (api / worker / relay pick their command there).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OMNI_DATA_DIR=/data

WORKDIR /src
# Only what the package needs: keeps .run/, .venv/ and local data out of the image and the cache key.
COPY pyproject.toml README.md ./
COPY omni ./omni
COPY api ./api
COPY commands ./commands
COPY projections ./projections
COPY schemas ./schemas
COPY streams ./streams
COPY stores ./stores
RUN pip install . \
 && useradd --system --create-home --uid 10001 omni \
 && mkdir -p /data && chown omni: /data

USER omni
WORKDIR /data
EXPOSE 8000
ENTRYPOINT []
CMD ["omni", "serve", "--host", "0.0.0.0", "--port", "8000"]

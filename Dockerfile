# syntax=docker/dockerfile:1
# mape-k image: the daemon, and the Charter simulator (`mape-k charter-sim ...`).
# Stage `deps` builds wheels of the dependencies from pyproject.toml alone, stage `build`
# the package's own wheel; the final slim image installs the dependencies in one layer and
# the package in the next, so a change under src/ rebuilds only the last small layer.
# It runs as the unprivileged user `mapek`.
# Build: docker build -t mape-k .      Run: see docker-compose.staging.yml

FROM python:3.11-slim AS deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml ./
# The `ha` extra too (psycopg): the same image runs as a replica on PostgreSQL.
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print(*p['dependencies'], *p['optional-dependencies']['ha'], sep='\n')" > requirements.txt \
 && pip wheel --wheel-dir /deps -r requirements.txt

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
RUN --mount=type=bind,from=deps,source=/deps,target=/deps \
    pip install --no-index /deps/*.whl \
 && groupadd --system --gid 10001 mapek \
 && useradd --system --uid 10001 --gid mapek --home-dir /var/lib/mape-k --shell /usr/sbin/nologin mapek \
 && mkdir -p /etc/mape-k /var/lib/mape-k \
 && chown mapek:mapek /var/lib/mape-k
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --no-deps /wheels/*.whl
# The default config shipped with the repo; mount your own over /etc/mape-k.
COPY config/ /etc/mape-k/
# In a container the API must listen beyond loopback, and the knowledge store lives in the
# volume. Environment beats the config file: override these with `-e`, not in the YAML.
ENV MAPEK_SERVER__HOST=0.0.0.0 \
    MAPEK_KNOWLEDGE__PATH=/var/lib/mape-k/knowledge.sqlite3 \
    MAPEK_LOGGING__FORMAT=json
VOLUME ["/etc/mape-k", "/var/lib/mape-k"]
USER mapek
WORKDIR /var/lib/mape-k
EXPOSE 8001
# python:slim has no curl; urllib is enough. /healthz answers 200 while the process serves.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8001/healthz', timeout=4).status == 200 else 1)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["mape-k"]
CMD ["run", "--config", "/etc/mape-k/mape_k_config.yaml"]

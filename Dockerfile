# seqserve images: the gRPC service on onnxruntime (target `serve`, the default) and the batch job (`batch`).
#   docker build --target serve -t seqserve .          # serving image: the base dependencies only, no torch
#   docker build --target batch -t seqserve-batch .    # + the `batch` extra (pyarrow, tqdm) and batch_infer.py
#   docker run -p 50051:50051 -p 8000:8000 seqserve    # serves the models baked into /models
# Every server setting is a SEQSERVE_* environment variable or a flag after the image name (see
# `docker run --rm seqserve --help`); the model repository is SEQSERVE_MODEL_REPOSITORY=/models.

# The dependency lists come from pyproject.toml, the one place they are declared. They are written to
# files in their own stage, so an edit elsewhere in pyproject.toml keeps the pip layers below cached.
FROM python:3.11-slim AS requirements
WORKDIR /src
COPY pyproject.toml .
# serve.txt: the base (client) dependencies + the `serve` extra; batch.txt: the `batch` extra's own.
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extra = lambda name: [d for d in p['optional-dependencies'][name] if not d.startswith('seqserve[')]; \
open('serve.txt', 'w').write('\n'.join(p['dependencies'] + extra('serve')) + '\n'); \
open('batch.txt', 'w').write('\n'.join(extra('batch')) + '\n')"

FROM python:3.11-slim AS base
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONPATH=/app \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SEQSERVE_MODEL_REPOSITORY=/models \
    ORT_DISABLE_TELEMETRY=1
WORKDIR /app
COPY --from=requirements /src/serve.txt /tmp/serve.txt
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin seqserve \
 && pip install --no-cache-dir -r /tmp/serve.txt \
 && rm /tmp/serve.txt
# Code and models stay owned by root: the service user can read them, not change them. The code runs from
# /app as in a checkout (PYTHONPATH, `python -m server`), not pip-installed: the serving image needs neither
# model/ (the wheel's seqserve.model, for training) nor a build step.
COPY seqserve/ seqserve/
COPY server/ server/
# A self-contained default; docker-compose.yml mounts ./model_repository over it read-only.
COPY model_repository/ /models/

# `serve` comes before `batch`: the classic builder (Docker 20.10, docker-compose 1.29) builds every stage up
# to its target, so in this order the serving image never waits on pyarrow.
FROM base AS serve
USER 10001:10001
EXPOSE 50051 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "server.healthcheck"]
ENTRYPOINT ["python", "-m", "server"]

FROM base AS batch
COPY --from=requirements /src/batch.txt /tmp/batch.txt
RUN pip install --no-cache-dir -r /tmp/batch.txt && rm /tmp/batch.txt
COPY batch_infer.py .
USER 10001:10001
ENTRYPOINT ["python", "/app/batch_infer.py"]
CMD ["--help"]

# The last stage is what a plain `docker build .` produces: the serving image.
FROM serve

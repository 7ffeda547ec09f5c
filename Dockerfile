# `blendrank serve` in a container: the ONNX service, no PyTorch (docs/serving.md, "Docker").
#   docker build -t blendrank-serve .
#   docker run --rm -p 8000:8000 -v "$PWD/runs/export:/models/current:ro" blendrank-serve
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/blendrank
# Only what the wheel is built from (.dockerignore keeps the rest out of the context).
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN pip install ".[serve]" && rm -rf /opt/blendrank/src /root/.cache

# An unprivileged user; the export directory is mounted read-only at /models/current, and
# POST /admin/reload may load others mounted under /models (set BLENDRANK_RELOAD_TOKEN to enable it).
RUN useradd --system --uid 10001 --no-create-home blendrank
USER blendrank
EXPOSE 8000
# The container's own health check (Kubernetes uses its own probes: /livez and /readyz).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/livez', timeout=2)"]
ENTRYPOINT ["blendrank", "serve", "--host", "0.0.0.0", "--port", "8000", "--log-format", "json", \
            "--model-root", "/models"]
CMD ["--model", "/models/current"]

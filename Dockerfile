# cxr-review service image: CPU inference with the bundled model; data under the /data volume.
#   docker build -t cxr-review .
#   docker run -p 8000:8000 -e CXR_SECRET_KEY=... -v cxr-data:/data cxr-review
# torch comes from PyPI (its default build also runs on CPU). For a smaller image, add a CPU-only
# wheel index: --build-arg TORCH_INDEX_URL=<index URL>.
FROM python:3.11-slim

ARG TORCH_INDEX_URL=
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/cxr-review

# Dependencies first, in their own layer: a code change does not reinstall torch.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The source tree, including the bundled model (ml/bundled), migrations and templates. Installed
# editable so that files kept beside the packages (alembic.ini, migrations/, templates/, static/)
# are found where the code looks for them.
COPY . .
RUN pip install --no-deps -e . \
    && useradd --system --uid 10001 --create-home --home-dir /home/cxr cxr \
    && mkdir -p /data \
    && chown cxr:cxr /data

ENV CXR_ENV=production \
    CXR_DATA_DIR=/data \
    CXR_HOST=0.0.0.0 \
    CXR_PORT=8000
VOLUME ["/data"]
USER cxr
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('CXR_PORT', '8000') + '/api/v1/health', timeout=4)"]

CMD ["cxr-review", "serve", "--host", "0.0.0.0"]

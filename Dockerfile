# imgclf: the HTTP service (gunicorn) on TensorFlow's official image.
#
#   docker build -t imgclf .                                                   # GPU (CUDA in the base image)
#   docker build -t imgclf:cpu --build-arg BASE=tensorflow/tensorflow:2.21.0 .  # CPU only
#   docker run --gpus all -p 8000:8000 -v /srv/models:/models:ro imgclf         # a model repository on the host
#
# TensorFlow comes from the base image (the tag matches the newest TensorFlow that pyproject.toml
# allows; tests/test_container.py checks it), so imgclf is installed without its [cpu]/[gpu] extras.
# Every setting is an IMGCLF_* variable (docs/reference/configuration.md): `docker run -e IMGCLF_WORKERS=1 ...`.
ARG BASE=tensorflow/tensorflow:2.21.0-gpu
FROM ${BASE}

LABEL org.opencontainers.image.title="imgclf" \
      org.opencontainers.image.description="Transfer-learning image classifier service: POST an image, get its labels" \
      org.opencontainers.image.licenses="Apache-2.0"

# Fonts for annotated images: DejaVu for Latin labels, WenQuanYi Zen Hei for CJK ones. Their versions
# are left to apt (hadolint DL3008): the base image is pinned by its tag, the fonts are what its Ubuntu
# release ships, and a pinned version would break the build at that release's next update.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends fonts-dejavu-core fonts-wqy-zenhei \
    && rm -rf /var/lib/apt/lists/*

# The user the service runs as (numeric below, so runAsNonRoot can verify it), and the directories it owns.
RUN groupadd --system --gid 10001 imgclf \
    && useradd --system --no-log-init --uid 10001 --gid imgclf --create-home --home-dir /home/imgclf \
       --shell /usr/sbin/nologin imgclf \
    && mkdir -p /models /home/imgclf/.cache/imgclf \
    && chown -R imgclf:imgclf /models /home/imgclf

# Python dependencies first, in their own layer: it is rebuilt only when pyproject.toml changes.
# The list is read from pyproject.toml itself (no second copy to keep in step).
WORKDIR /usr/src/imgclf
COPY pyproject.toml ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep=chr(10))" \
       > /tmp/requirements.txt \
    && python -m pip install --no-cache-dir --disable-pip-version-check --requirement /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Then the code, installed as a package (dependencies are already there); the sources go away after.
COPY README.md ./
COPY core/ core/
COPY featurizer/ featurizer/
COPY training/ training/
COPY models/ models/
COPY service/ service/
RUN python -m pip install --no-cache-dir --disable-pip-version-check --no-deps . \
    && rm -rf /usr/src/imgclf

ENV IMGCLF_MODEL_REPOSITORY=/models \
    IMGCLF_BIND=0.0.0.0:8000 \
    IMGCLF_HOME=/home/imgclf/.cache/imgclf \
    TF_CPP_MIN_LOG_LEVEL=2 \
    TF_FORCE_GPU_ALLOW_GROWTH=true \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# TF_FORCE_GPU_ALLOW_GROWTH: each gunicorn worker is its own TensorFlow process; without it the first
# one would reserve the whole GPU and the second would fail to load. PROMETHEUS_MULTIPROC_DIR is left
# unset: service/server/gunicorn_conf.py makes a fresh directory under /tmp before the workers start.

WORKDIR /home/imgclf
USER 10001:10001
VOLUME ["/models"]
EXPOSE 8000

# Ready = every model loaded and warmed up. The port follows IMGCLF_BIND; curl may be absent, Python is not.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('IMGCLF_BIND', '0.0.0.0:8000').rsplit(':', 1)[-1]; sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/readyz', timeout=5).status == 200 else 1)"]

# What `imgclf serve` execs (service/cli/serve.py, front_argv()): the front is PID 1. It listens on
# IMGCLF_BIND, reads every request whole under the deadlines (IMGCLF_HEADER_TIMEOUT, IMGCLF_BODY_TIMEOUT,
# IMGCLF_MIN_BODY_RATE; docs/guides/security.md) and hands it to gunicorn, which it starts on
# a private unix socket with the shipped config. A container stop's SIGTERM lets in-flight requests
# finish (IMGCLF_GRACEFUL_TIMEOUT, 30 s by default), then stops gunicorn; SIGHUP reloads gunicorn's
# workers. IMGCLF_FRONT=0 runs gunicorn alone on the port (behind a proxy of your own).
CMD ["python", "-P", "-m", "imgclf.service.front.main"]

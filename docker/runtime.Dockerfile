# The runtime image: one exported model and nnlab[runtime,demo] (ONNX Runtime, no torch), running `nnlab predict` or
# `nnlab demo`. Built by docker/build-runtime.sh, which puts the context together: model/ (the export), dist/ (nnlab's
# wheel), requirements.txt (the pinned, hashed packages of uv.lock for the extras) and certs/ (the machine's own
# trusted certificates, where it has any: a package registry behind a proxy that signs with them).
#
#   docker run --rm -v "$PWD:/in" nnlab-digits predict /model /in/digit.png
#   docker run --rm -p 127.0.0.1:7860:7860 nnlab-digits          # the demo, on this machine's port 7860
ARG BASE=debian:bookworm-slim
FROM ${BASE}
# Debian bookworm's Python is 3.11, which nnlab supports; the wheels bring their own native libraries.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY certs/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY requirements.txt /tmp/nnlab/requirements.txt
RUN python3 -m venv /opt/nnlab \
    && /opt/nnlab/bin/pip install --quiet --require-hashes --only-binary=:all: -r /tmp/nnlab/requirements.txt
COPY dist/ /tmp/nnlab/dist/
RUN /opt/nnlab/bin/pip install --quiet --no-deps /tmp/nnlab/dist/*.whl && rm -rf /tmp/nnlab
COPY model/ /model/
RUN useradd --create-home --uid 1000 nnlab
USER nnlab
WORKDIR /home/nnlab
ENV PATH=/opt/nnlab/bin:$PATH GRADIO_ANALYTICS_ENABLED=False PYTHONUNBUFFERED=1
ENTRYPOINT ["nnlab"]
CMD ["demo", "/model", "--host", "0.0.0.0"]

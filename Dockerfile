# medue in a container (not built in CI). CPU base by default; for a CUDA build pass a CUDA base image and, if your
# site mirrors torch builds per CUDA version, that index (PIP_EXTRA_ARGS="--index-url <your torch index>"):
#   docker build -t medue:cpu .
#   docker build -t medue:cuda --build-arg BASE=nvidia/cuda:12.4.1-runtime-ubuntu22.04 \
#       --build-arg PIP_EXTRA_ARGS="--index-url <torch index for your CUDA version>" .
#   docker run --rm -v /site/data:/data -v /site/out:/out -e MEDUE_KEY medue:cpu run /data/pipeline.yaml
# The key comes from the environment (MEDUE_KEY) at run time, never from the image.
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG TORCH_SPEC="torch==2.13.0"
ARG PIP_EXTRA_ARGS=""
RUN if ! command -v python3 >/dev/null; then apt-get update && apt-get install -y --no-install-recommends \
        python3 python3-pip && rm -rf /var/lib/apt/lists/*; fi
WORKDIR /opt/medue
COPY pyproject.toml README.md LICENSE ./
COPY medue ./medue
COPY pipelines ./pipelines
RUN python3 -m pip install --no-cache-dir ${PIP_EXTRA_ARGS} "${TORCH_SPEC}" \
    && python3 -m pip install --no-cache-dir .
RUN useradd --create-home medue
USER medue
ENTRYPOINT ["medue"]
CMD ["--help"]

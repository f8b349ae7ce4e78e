# medue in a container (not built in CI). CPU by default; for a CUDA build pass a CUDA base and the matching
# torch index, e.g.:
#   docker build -t medue:cpu .
#   docker build -t medue:cuda --build-arg BASE=nvidia/cuda:12.4.1-runtime-ubuntu22.04 \
#       --build-arg TORCH_SPEC="torch==2.13.0" --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 .
#   docker run --rm -v /site/data:/data -v /site/out:/out -e MEDUE_KEY medue:cpu run /data/pipeline.yaml
# The key comes from the environment (MEDUE_KEY) at run time, never from the image.
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN if ! command -v python3 >/dev/null; then apt-get update && apt-get install -y --no-install-recommends \
        python3 python3-pip && rm -rf /var/lib/apt/lists/*; fi
WORKDIR /opt/medue
COPY pyproject.toml README.md LICENSE ./
COPY medue ./medue
COPY pipelines ./pipelines
RUN python3 -m pip install --no-cache-dir --index-url ${TORCH_INDEX} --extra-index-url https://pypi.org/simple \
        "${TORCH_SPEC}" && python3 -m pip install --no-cache-dir .
RUN useradd --create-home medue
USER medue
ENTRYPOINT ["medue"]
CMD ["--help"]

# The signtune image: the `study` command on a CUDA-capable PyTorch base.
#   docker build -t signtune .
#   docker run --gpus all signtune run --study demo --trials 30
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false

WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
# torch comes from the base image (CUDA build); the range in pyproject.toml accepts it.
RUN pip install --no-cache-dir .
COPY search_spaces ./search_spaces
COPY studies ./studies

# Unprivileged user; studies/ is where SQLite studies, exports and MLflow stores live.
RUN useradd --create-home --uid 1000 signtune && chown -R signtune /app
USER signtune

ENTRYPOINT ["study"]
CMD ["--help"]

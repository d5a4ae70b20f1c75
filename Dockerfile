# The raydetect serving image: the official Ray GPU image of the same Ray version, plus this project.
#
#   docker build -t raydetect-serve .
#   docker run --gpus all --shm-size=2g -p 8000:8000 \
#       -v /path/to/model-dir:/models/production:ro -e RAYDETECT_API_KEY=change-me raydetect-serve
#   curl -s localhost:8000/healthz
#
# The model directory is what `raydetect train --output` writes (model.json + weights.pt); an s3:// URI
# works too (-e RAYDETECT_MODEL_URI=s3://bucket/models/production plus the usual AWS_* variables).
# On a Ray cluster, use this image for the head and worker nodes and `serve deploy serve_config.yaml`.
FROM rayproject/ray:2.60.0-py311-gpu

WORKDIR /home/ray/raydetect
COPY --chown=ray:users pyproject.toml README.md serve_config.yaml ./
COPY --chown=ray:users raydetect ./raydetect
COPY --chown=ray:users jobs ./jobs
# The image's Python already has ray 2.60; pip adds torch/torchvision (CUDA wheels) and the rest.
RUN pip install --no-cache-dir . && raydetect version

ENV RAYDETECT_MODEL_URI=/models/production
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=5)"
CMD ["raydetect", "serve", "--host", "0.0.0.0", "--port", "8000"]

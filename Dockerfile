# CPU image by default; for CUDA: docker build --build-arg TORCH_VARIANT=cu130 .
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

ARG TORCH_VARIANT=cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TRASHCAM_VAR_DIR=/var/lib/trashcam \
    TRASHCAM_SHIPPED_MODEL_PATH=/srv/trashcam/weights/se_resnet50/model.pt

WORKDIR /srv/trashcam
# torch first, from the index of the wanted variant, so the project's pins find it installed.
RUN pip install torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/${TORCH_VARIANT}
COPY pyproject.toml README.md ./
COPY app ./app
COPY core ./core
COPY models ./models
COPY training ./training
COPY worker ./worker
RUN pip install .
COPY weights ./weights

RUN useradd --system --home-dir /var/lib/trashcam --create-home trashcam \
    && mkdir -p /srv/artifacts && chown trashcam /srv/artifacts
USER trashcam
EXPOSE 8000
CMD ["trashcam", "api", "--host", "0.0.0.0", "--port", "8000"]

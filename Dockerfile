# Image used by docker-compose.yml (not built on the project's machines, which have no Docker engine).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends gcc g++ && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . .
RUN pip install --no-cache-dir . && python setup.py build_ext --inplace
ENTRYPOINT []

FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY shared ./shared
COPY ingest_api ./ingest_api
COPY worker ./worker
COPY ops ./ops
COPY migrations ./migrations
RUN pip install --no-cache-dir -e . && useradd --system leadstream
USER leadstream
ENV LEADSTREAM_ENV=prod LEADSTREAM_API_HOST=0.0.0.0
EXPOSE 8000 5555

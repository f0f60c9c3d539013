FROM python:3.11-slim
WORKDIR /app
# Dependencies from the lock (every version and hash pinned), then zen_async itself.
COPY requirements/base.txt requirements/base.txt
RUN pip install --no-cache-dir --require-hashes -r requirements/base.txt
COPY pyproject.toml README.md ./
COPY zen_async ./zen_async
RUN pip install --no-cache-dir --no-deps .
# Logs are JSON lines on stderr; stdout is reserved for command output (and MCP stdio).
ENTRYPOINT []
CMD ["zen-async", "health"]

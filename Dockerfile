FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY zen_async ./zen_async
RUN pip install --no-cache-dir .
# Logs are JSON lines on stderr; stdout is reserved for command output (and MCP stdio).
ENTRYPOINT []
CMD ["zen-async", "health"]

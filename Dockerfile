FROM python:3.11-slim
WORKDIR /app
# Dependencies from the lock (every version and hash pinned), then zen_async itself.
COPY requirements/base.txt requirements/base.txt
RUN pip install --no-cache-dir --require-hashes -r requirements/base.txt
COPY pyproject.toml README.md ./
COPY zen_async ./zen_async
RUN pip install --no-cache-dir --no-deps .
# Run as an unprivileged user: a compromised server process owns nothing in the image.
RUN useradd --create-home --uid 10001 --user-group zen
USER zen
# Logs are JSON lines on stderr; stdout is reserved for command output (and MCP stdio).
ENTRYPOINT []
CMD ["zen-async", "health"]
# For `serve --transport http` on port 8765 (docker-compose.yml): healthy while the MCP app
# answers HTTP (401 without a token is an answer). Redis being down is not the container's
# fault: the server stays up and its tools report the outage.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 CMD ["python", "-c", "import http.client as h; c = h.HTTPConnection('127.0.0.1', 8765, timeout=4); c.request('GET', '/mcp'); c.getresponse()"]

# tallyproxy: docker build -t tallyproxy .   (Llama 3's tokenizer: --build-arg EXTRAS=llama)
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# Optional extras of the package, comma-separated: "llama" adds Llama 3's tokenizer.
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/tallyproxy
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY migrations ./migrations
# A wheel install (not editable), so the migrations travel inside the package.
RUN /opt/tallyproxy/bin/pip install "/src${EXTRAS:+[$EXTRAS]}"

FROM ${PYTHON_IMAGE}
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/tallyproxy --create-home \
        tallyproxy \
    && mkdir /var/lib/tallyproxy/tallyproxy-spool \
    && chown tallyproxy:tallyproxy /var/lib/tallyproxy/tallyproxy-spool
COPY --from=build /opt/tallyproxy /opt/tallyproxy
ENV PATH=/opt/tallyproxy/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The default spool_dir (./tallyproxy-spool) and SQLite file resolve here; mount a volume on
# /var/lib/tallyproxy/tallyproxy-spool so spooled records survive a restart.
WORKDIR /var/lib/tallyproxy
USER tallyproxy:tallyproxy
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('TALLYPROXY_PORT', '8080'), timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["tallyproxy"]
CMD ["serve", "--host", "0.0.0.0"]

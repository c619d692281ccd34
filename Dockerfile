# tallyproxy: docker build -t tallyproxy .   (Llama 3's tokenizer: --build-arg EXTRAS=llama)
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# Optional extras of the package, comma-separated: "llama" adds Llama 3's tokenizer.
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/tallyproxy
WORKDIR /src
# The dependencies first, at the versions constraints.txt pins, in a layer of their own: a
# change under proxy/ rebuilds only the layers below.
COPY pyproject.toml constraints.txt deploy/requirements.py ./
RUN python requirements.py "$EXTRAS" >requirements.txt \
    && /opt/tallyproxy/bin/pip install --constraint constraints.txt --requirement requirements.txt
COPY README.md ./
COPY proxy ./proxy
COPY migrations ./migrations
# A wheel install (not editable), so the migrations travel inside the package.
RUN /opt/tallyproxy/bin/pip install --no-deps "/src${EXTRAS:+[$EXTRAS]}"

FROM ${PYTHON_IMAGE}
# uid and gid pinned: a bind-mounted data directory needs `chown 10001:10001` on the host.
RUN groupadd --system --gid 10001 tallyproxy \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/tallyproxy --create-home \
        tallyproxy \
    && mkdir /var/lib/tallyproxy/data \
    && chown 10001:10001 /var/lib/tallyproxy/data
COPY --from=build /opt/tallyproxy /opt/tallyproxy
ENV PATH=/opt/tallyproxy/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The default SQLite file (./tallyproxy.db) and spool_dir (./tallyproxy-spool) resolve here,
# inside the volume: recreating the container keeps the records and the spooled ones.
WORKDIR /var/lib/tallyproxy/data
VOLUME /var/lib/tallyproxy/data
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('TALLYPROXY_PORT', '8080'), timeout=2)"]
# On SIGTERM, streams get server.shutdown_grace (30 s) to finish, then the writer up to 30 s
# to store what is queued: stop with `docker stop -t 75` (`docker run --stop-timeout 75`);
# docker's 10 s default kills running streams and loses their records.
STOPSIGNAL SIGTERM
ENTRYPOINT ["tallyproxy"]
CMD ["serve", "--host", "0.0.0.0"]

#!/usr/bin/env bash
# Stand-ins for the registry's base images, built from Debian bookworm's packages with
# debootstrap, for machines that cannot pull from a registry (deploy/stack-test.sh uses them):
#
#   tallyproxy-standin/python:3.11-bookworm    python3.11 with venv (the Dockerfile's base)
#   tallyproxy-standin/postgres:15-bookworm    postgresql-15 with the official image's env
#   tallyproxy-standin/nginx:1.22-bookworm     nginx and wget (the LB's health check)
#
# Debian has PostgreSQL 15 and nginx 1.22, not the 16 and 1.27 the compose file names; point
# TALLYPROXY_POSTGRES_IMAGE / TALLYPROXY_NGINX_IMAGE / TALLYPROXY_PYTHON_IMAGE at these.
# Needs root, debootstrap and a Debian mirror (MIRROR, default deb.debian.org).
# An image that exists already is kept (FORCE=1 rebuilds).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
mirror=${MIRROR:-http://deb.debian.org/debian}
work=${STANDIN_WORK:-/var/tmp/tallyproxy-standins}
mkdir -p "$work/cache"

# rootfs TAG PACKAGES: a minimal bookworm with PACKAGES, imported as TAG.
rootfs() {
  local tag=$1 packages=$2 dir
  if [ -z "${FORCE:-}" ] && docker image inspect "$tag" >/dev/null 2>&1; then
    echo "standins: $tag exists"
    return
  fi
  dir=$(mktemp -d "$work/rootfs.XXXXXX")
  echo "standins: debootstrap $tag ($packages)"
  debootstrap --variant=minbase --cache-dir="$work/cache" --include="$packages" \
    bookworm "$dir" "$mirror" >"$dir.log" 2>&1 || { cat "$dir.log" >&2; exit 1; }
  chroot "$dir" apt-get clean
  rm -rf "$dir"/var/lib/apt/lists/* "$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/tmp/*
  tar -C "$dir" -c . | docker import - "$tag.rootfs" >/dev/null
  rm -rf "$dir" "$dir.log"
}

rootfs tallyproxy-standin/python:3.11-bookworm \
  python3,python3-venv,python-is-python3,ca-certificates
rootfs tallyproxy-standin/postgres:15-bookworm postgresql-15
rootfs tallyproxy-standin/nginx:1.22-bookworm nginx-light,wget

# The host's own certificate authorities (HOST_CA_DIR) are trusted too, so that pip in the
# image build gets through a TLS-inspecting proxy the host trusts; none: the Debian set only.
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
mkdir "$context/ca"
cp "${HOST_CA_DIR:-/usr/local/share/ca-certificates}"/*.crt "$context/ca/" 2>/dev/null || true
docker build -q -t tallyproxy-standin/python:3.11-bookworm -f - "$context" >/dev/null <<'DOCKERFILE'
FROM tallyproxy-standin/python:3.11-bookworm.rootfs
COPY ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null
ENV LANG=C.UTF-8
CMD ["python3"]
DOCKERFILE

docker build -q -t tallyproxy-standin/postgres:15-bookworm -f - "$here" >/dev/null <<'DOCKERFILE'
FROM tallyproxy-standin/postgres:15-bookworm.rootfs
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data LANG=C.UTF-8
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
RUN mkdir -p "$PGDATA" /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql \
    && chmod 0755 /usr/local/bin/docker-entrypoint.sh
USER postgres
VOLUME /var/lib/postgresql/data
STOPSIGNAL SIGINT
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
DOCKERFILE

docker build -q -t tallyproxy-standin/nginx:1.22-bookworm - >/dev/null <<'DOCKERFILE'
FROM tallyproxy-standin/nginx:1.22-bookworm.rootfs
RUN ln -sf /dev/stderr /var/log/nginx/error.log
STOPSIGNAL SIGQUIT
EXPOSE 8080
CMD ["nginx", "-g", "daemon off;"]
DOCKERFILE
echo "standins: built"

#!/usr/bin/env bash
# Vendor tiktoken's BPE vocabularies into proxy/vocab/ so token counting works offline.
#
# tiktoken downloads its vocabularies from openaipublic.blob.core.windows.net on first use,
# which fails on machines that only reach a package registry. The litellm wheel ships the
# same files, named as tiktoken's cache expects (sha1 of the download URL), so we take them
# from there. litellm is only a source of bytes here, never a dependency of tallyproxy.
# The sha256 of each file is checked against tiktoken_ext/openai_public.py's expected hash
# before it is copied, and again by proxy/tokens.py every time it loads one.
#
# Usage: scripts/vendor_tokenizers.sh [PIP_REQUIREMENT]   (default: litellm)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$repo_root/.venv/bin/python}"
requirement="${1:-litellm}"
dest="$repo_root/proxy/vocab"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

"$python" -m pip download --quiet --no-deps --only-binary=:all: --dest "$work" "$requirement"
wheel="$(ls "$work"/litellm-*.whl)"

mkdir -p "$dest"
# Reads the names and hashes from tiktoken_ext itself so this script cannot drift from it.
"$python" - "$wheel" "$dest" <<'PY'
import hashlib
import inspect
import re
import sys
import zipfile

from tiktoken_ext import openai_public

wheel, dest = sys.argv[1], sys.argv[2]
source = inspect.getsource(openai_public)
prefix = "litellm/litellm_core_utils/tokenizers/"
with zipfile.ZipFile(wheel) as archive:
    for name in ("o200k_base", "cl100k_base", "p50k_base"):
        url = f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
        pattern = re.escape(url) + r'",\s*expected_hash="([0-9a-f]{64})"'
        expected = re.search(pattern, source)
        if expected is None:
            sys.exit(f"no expected hash for {url} in tiktoken_ext.openai_public")
        data = archive.read(prefix + hashlib.sha1(url.encode()).hexdigest())
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected.group(1):
            sys.exit(f"{name}: sha256 {actual} != expected {expected.group(1)}")
        with open(f"{dest}/{name}.tiktoken", "wb") as out:
            out.write(data)
        print(f"{name}.tiktoken  {len(data)} bytes  sha256 {actual}")
PY

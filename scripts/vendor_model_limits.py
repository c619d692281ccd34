"""Vendor each model's maximum output tokens into proxy/data/model_limits.json.

Budget reservations of requests without ``max_tokens`` hold the model's maximum output
(``proxy.spend.limits``); genai-prices carries prices and context windows only. The numbers
come from LiteLLM's model table (MIT), read out of its wheel on PyPI and checked against a
pinned sha256; LiteLLM is not a dependency of tallyproxy.

Usage: .venv/bin/python scripts/vendor_model_limits.py   (bump VERSION and SHA256 to refresh)
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

VERSION = "1.110.2"
TABLE = "litellm/model_prices_and_context_window_backup.json"
SHA256 = "8943af58bf9f979c6a4bef815687117ffa341e462a41faed9be17b5c33d3dcc2"
NOT_GENERATIVE = {"embedding", "image_generation", "audio_transcription", "audio_speech",
                  "rerank", "moderation", "ocr", "search", "vector_store"}  # fmt: skip
DEST = Path(__file__).resolve().parents[1] / "proxy" / "data" / "model_limits.json"


def main() -> int:
    with tempfile.TemporaryDirectory() as work:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--only-binary=:all:", "--dest", work, f"litellm=={VERSION}"],
            check=True,
        )  # fmt: skip
        (wheel,) = Path(work).glob("litellm-*.whl")
        raw = zipfile.ZipFile(wheel).read(TABLE)
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SHA256:
        print(f"{TABLE} of litellm {VERSION} has sha256 {digest}, expected {SHA256}")
        return 1
    table = json.loads(raw)
    limits = {
        name: entry["max_output_tokens"]
        for name, entry in sorted(table.items())
        if isinstance(entry, dict)
        and type(entry.get("max_output_tokens")) is int
        and entry["max_output_tokens"] > 0
        and entry.get("mode") not in NOT_GENERATIVE
    }
    document = {
        "source": f"litellm {VERSION}, {TABLE} (MIT)",
        "sha256": SHA256,
        "max_output_tokens": limits,
    }
    DEST.write_text(json.dumps(document, indent=0, sort_keys=False) + "\n")
    print(f"{len(limits)} models -> {DEST}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

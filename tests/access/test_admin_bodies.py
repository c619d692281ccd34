"""The admin API reads a JSON body whatever its ``Content-Type``, as ``curl -d`` sends it.

curl's ``-d`` declares ``application/x-www-form-urlencoded``; the README's examples use it.
Such a body used to be a 400 "Input should be a valid dictionary".
"""

from __future__ import annotations

import orjson
import pytest

from tests.access.conftest import ADMIN
from tests.e2e.conftest import RunningProxy

KEY = {"name": "billing-app", "user": "alice", "models": ["gpt-4o-mini"], "expires_at": None}
BUDGET = {"scope": "session", "subject": "chat-42", "period": "total", "usd": "0.50"}
DECLARED = [
    None,
    "application/json",
    "application/x-www-form-urlencoded",
    "text/plain",
    "application/octet-stream",
]


@pytest.mark.parametrize("content_type", DECLARED)
async def test_a_json_body_is_read_whatever_its_declared_type(
    keyed_proxy: RunningProxy, content_type: str | None
) -> None:
    headers = {**ADMIN} if content_type is None else {**ADMIN, "Content-Type": content_type}
    api = keyed_proxy.api
    key = await api.post("/admin/keys", content=orjson.dumps(KEY), headers=headers)
    assert key.status_code == 201, key.text
    assert key.json()["user"] == "alice" and key.json()["models"] == ["gpt-4o-mini"]
    budget = await api.post("/admin/budgets", content=orjson.dumps(BUDGET), headers=headers)
    assert budget.status_code == 201, budget.text
    assert budget.json()["limit_usd"] == "0.5" and budget.json()["subject"] == "chat-42"


@pytest.mark.parametrize(
    ("body", "content_type", "says"),
    [
        (b"name=billing-app&user=alice", "application/x-www-form-urlencoded", "does not parse"),
        (b"", "application/json", "it is empty"),
        (b'{"name": "app"', "application/json", "does not parse"),
        (b'["app"]', "text/plain", "not list"),
        (b"\xff\xfe", "application/octet-stream", "does not parse"),
    ],
)
@pytest.mark.parametrize("path", ["/admin/keys", "/admin/budgets"])
async def test_a_body_that_is_not_a_json_object_is_a_400_saying_so(
    keyed_proxy: RunningProxy, path: str, body: bytes, content_type: str, says: str
) -> None:
    headers = {**ADMIN, "Content-Type": content_type}
    response = await keyed_proxy.api.post(path, content=body, headers=headers)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "body"
    assert error["message"].startswith(f"the body of POST {path} must be a JSON object")
    assert says in error["message"]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/admin/keys", {"name": ""}, "name"),
        ("/admin/keys", {"name": "x", "colour": "red"}, "colour"),
        ("/admin/budgets", {**BUDGET, "period": "week"}, "period"),
        ("/admin/budgets", {**BUDGET, "tokens": 5}, "body"),  # usd and tokens: the whole body
    ],
)
async def test_a_bad_field_in_a_form_declared_body_is_a_400_naming_it(
    keyed_proxy: RunningProxy, path: str, body: dict[str, object], param: str
) -> None:
    headers = {**ADMIN, "Content-Type": "application/x-www-form-urlencoded"}
    response = await keyed_proxy.api.post(path, content=orjson.dumps(body), headers=headers)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


async def test_without_the_admin_token_the_body_is_not_looked_at(
    keyed_proxy: RunningProxy,
) -> None:
    response = await keyed_proxy.api.post(
        "/admin/keys", content=b"not json", headers={"Authorization": "Bearer wrong"}
    )
    assert response.status_code == 401, response.text

"""Input hardening: every route of the app, every id, number and path parameter filled with values
out of range (0, -1, 2**63, 10**30, 1e999, NaN, inf, "abc"), as the admin, an annotator, a
reviewer and nobody: only 4xx answers, and the same client (and a real keep-alive connection)
keeps working afterwards. An unexpected error is a 500 without a traceback, and the connection
survives it."""

from __future__ import annotations

import json
import math
import types
import typing

import httpx
import pytest
from fastapi.routing import APIRoute
from pydantic import BaseModel, TypeAdapter, ValidationError
from sqlalchemy import select

from onbrand.annotate import service
from onbrand.annotate.db import Assignment

BAD_TEXT = ["0", "-1", str(2**63), str(10**30), "1e999", "nan", "inf", "abc"]
BAD_JSON = ["0", "-1", str(2**63), str(10**30), "1e999", "NaN", "Infinity", "-Infinity", '"abc"']
NUMERIC = (int, float)
# Routes whose inputs the sweep must find (the introspection below is what is being trusted).
MUST_SWEEP = {
    ("POST", "/annotate/submit"),
    ("GET", "/api/items/{assignment_id}"),
    ("POST", "/api/items/{assignment_id}/skip"),
    ("POST", "/api/judgements"),
    ("POST", "/api/admin/projects"),
    ("POST", "/api/admin/projects/{project}/annotators"),
    ("POST", "/api/admin/projects/{project}/members/{name}/rotate"),
    ("POST", "/api/admin/projects/{project}/assign"),
    ("GET", "/api/admin/projects/{project}/export"),
    ("GET", "/api/admin/audit"),
    ("POST", "/api/review/adjudications"),
    ("POST", "/review/adjudicate"),
    ("GET", "/review"),
}


def _base(annotation) -> type | None:
    """int/float/str/list/dict/BaseModel behind ``X | None``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base(args[0]) if len(args) == 1 else None
    return typing.get_origin(annotation) or annotation


def _valid(annotation):
    base = _base(annotation)
    return {str: "x", int: 1, float: 0.5, list: [], dict: {}}.get(base)


def _model_body(model: type[BaseModel], bad_field: str | None) -> dict:
    body = {}
    for name, f in model.model_fields.items():
        if name == bad_field:
            body[name] = "__BAD__"
        elif f.is_required():
            body[name] = _valid(f.annotation)
    return body


def _field(route: APIRoute, kind: str, name: str):
    """The pydantic FieldInfo of an input (None for path params: every one is swept)."""
    dep = route.dependant
    if kind == "json":
        model = next(_base(p.field_info.annotation) for p in dep.body_params)
        return model.model_fields[name]
    params = dep.query_params if kind == "query" else dep.body_params
    return next(p.field_info for p in params if p.name == name) if kind != "path" else None


def _accepts(field, value: str, kind: str) -> bool:
    """Whether the field's own declared range takes the value (0 is a fine overlap or seed):
    those are not out-of-range inputs, so the sweep does not send them."""
    if field is None or _base(field.annotation) is str:
        return False
    try:
        TypeAdapter(typing.Annotated[field.annotation, field]).validate_python(
            json.loads(value) if kind == "json" else value
        )
    except (ValidationError, ValueError):
        return False
    return True


def _slots(route: APIRoute) -> list[tuple[str, str]]:
    """(kind, name) of every input the sweep fills: all path params, numeric and text query
    params, numeric form fields, numeric fields of the JSON body model."""
    dep = route.dependant
    out = [("path", p.name) for p in dep.path_params]
    out += [("query", p.name) for p in dep.query_params if _base(p.field_info.annotation) in (*NUMERIC, str)]
    for p in dep.body_params:
        base = _base(p.field_info.annotation)
        if isinstance(base, type) and issubclass(base, BaseModel):
            out += [("json", n) for n, f in base.model_fields.items() if _base(f.annotation) in NUMERIC]
        elif type(p.field_info).__name__ == "Form" and base in NUMERIC:
            out.append(("form", p.name))
    return out


def _request(route: APIRoute, kind: str, name: str, value: str, good_path: dict) -> dict:
    dep = route.dependant
    path_values = {p.name: (value if kind == "path" else good_path[p.name]) for p in dep.path_params}
    req = {"method": next(iter(route.methods - {"HEAD"})), "url": route.path.format(**path_values)}
    if kind == "query":
        req["params"] = {name: value}
    forms = [p for p in dep.body_params if type(p.field_info).__name__ == "Form"]
    if forms:
        req["data"] = {p.name: _valid(p.field_info.annotation) for p in forms if p.field_info.is_required()}
        if kind == "form":
            req["data"][name] = value
    models = [p for p in dep.body_params if isinstance(_base(p.field_info.annotation), type)]
    models = [p for p in models if issubclass(_base(p.field_info.annotation), BaseModel)]
    if models:
        model = _base(models[0].field_info.annotation)
        text = json.dumps(_model_body(model, name if kind == "json" else None))
        req["content"] = text.replace('"__BAD__"', value) if kind == "json" else text
        req["headers"] = {"Content-Type": "application/json"}
    return req


@pytest.fixture
def people(env):
    """Bearer headers for each role, plus a reviewer in the project."""
    with env.sessions() as s:
        p = service.get_project(s, env.project)
        rita = service.add_annotator(s, p, "rita", role="reviewer")[1]
        asg = s.scalar(select(Assignment.id).order_by(Assignment.id))
    return {
        "admin": env.auth("admin"),
        "annotator": env.auth("alice"),
        "reviewer": {"Authorization": f"Bearer {rita}"},
        "nobody": {},
    }, {"project": env.project, "name": "alice", "assignment_id": str(asg)}


def test_every_route_refuses_out_of_range_input_with_4xx(env, people):
    headers_by_role, good_path = people
    c = env.client
    swept, failures, answered = set(), [], 0
    for route in c.app.routes:
        if not isinstance(route, APIRoute) or not _slots(route):
            continue
        method = next(iter(route.methods - {"HEAD"}))
        swept.add((method, route.path))
        for kind, name in _slots(route):
            for value in BAD_JSON if kind == "json" else BAD_TEXT:
                if _accepts(_field(route, kind, name), value, kind):
                    continue
                req = _request(route, kind, name, value, good_path)
                base_headers = req.pop("headers", {})
                for role, headers in headers_by_role.items():
                    r = c.request(**req, headers={**base_headers, **headers}, follow_redirects=False)
                    answered += 1
                    sign_in = r.status_code == 303 and r.headers["location"] == "/login" and role == "nobody"
                    if not (400 <= r.status_code < 500 or sign_in) or "Traceback" in r.text:
                        failures.append(
                            (role, method, req["url"], kind, name, value, r.status_code, r.text[:200])
                        )
    assert not failures, failures[:10]
    assert MUST_SWEEP <= swept, MUST_SWEEP - swept
    assert answered > 500
    # The same client still works: read and judge an item.
    h = env.auth("alice")
    item = c.get("/api/next", headers=h)
    assert item.status_code == 200
    r = c.post(
        "/api/judgements", json={"assignment_id": item.json()["assignment_id"], "choice": "tie"}, headers=h
    )
    assert r.status_code == 200 and r.json()["created"]


JSON = {"Content-Type": "application/json"}


def test_out_of_range_ids_have_clear_messages(env):
    c, h = env.client, {**env.auth("alice"), **JSON}
    r = c.get(f"/api/items/{10**23}", headers=h)
    assert r.status_code == 422 and "assignment_id" in r.json()["detail"]
    r = c.post("/api/judgements", json={"assignment_id": 2**63, "choice": "left"}, headers=h)
    assert r.status_code == 422 and "less than or equal to 9223372036854775807" in r.json()["detail"]
    r = c.post("/api/judgements", content=b'{"assignment_id": 1e999, "choice": "left"}', headers=h)
    assert r.status_code == 422
    a = {**env.auth("admin"), **JSON}
    r = c.post("/api/admin/projects", content=b'{"name": "n", "overlap": NaN}', headers=a)
    assert r.status_code == 422 and "overlap" in r.json()["detail"] and "finite" in r.json()["detail"]
    r = c.get(f"/api/admin/projects/{'9' * 25}/stats", headers=a)
    assert r.status_code == 404
    # Task JSON is stored as sent: a NaN or a 10**30 inside a pair is refused, not stored.
    pair = '{"prompt": "q", "candidates": ["x", "y"], "source": {"line": %s}}'
    for raw in ("NaN", str(10**30)):
        body = ('{"pairs": [' + pair % raw + "]}").encode()
        r = c.post("/api/admin/projects/aurora/tasks", content=body, headers=a)
        assert r.status_code == 422 and "request:1" in r.json()["detail"], r.text
    # Errors never echo the rejected input (a sign-in form's value may be a token).
    r = c.post("/api/judgements", json={"assignment_id": "sekrit-value-123", "choice": "left"}, headers=h)
    assert r.status_code == 422 and "sekrit-value-123" not in r.text


def test_service_guards(env, brand_facts):
    from onbrand.config import check_range

    for v in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="finite"):
            check_range("overlap", v, 0.0, 1.0)
    check_range("overlap", 0.5, 0.0, 1.0)
    with env.sessions() as s:
        for key in ("9" * 30, 10**30, 2**63, "٣", "²"):
            with pytest.raises(LookupError):
                service.get_project(s, key)
        assert service.get_project(s, "1").name == "aurora"
        with pytest.raises(ValueError, match="overlap"):
            service.create_project(s, "nan-project", brand_facts, overlap=math.nan)


def _boom():
    raise RuntimeError("secret internals: /var/lib/x.db at line 42")


def test_unexpected_error_is_a_plain_500(env):
    c = env.client
    c.app.add_api_route("/api/boom", _boom)
    c.app.add_api_route("/boom", _boom)
    r = c.get("/api/boom")
    assert r.status_code == 500 and r.json() == {"detail": "internal error; the server log has details"}
    assert r.headers["x-content-type-options"] == "nosniff"
    page = c.get("/boom")
    assert page.status_code == 500 and "Error 500" in page.text
    for text in (r.text, page.text):
        assert "Traceback" not in text and "secret internals" not in text
    assert c.get("/api/next", headers=env.auth("alice")).status_code == 200


def _local_port(r: httpx.Response) -> int:
    return r.extensions["network_stream"].get_extra_info("client_addr")[1]


def test_keep_alive_connection_survives_bad_input_and_errors(env, live_server):
    """One pooled connection: out-of-range ids and an unexpected error are answered on it, and the
    next request goes over the same socket (uvicorn closes a connection whose app raised)."""
    app = env.client.app
    app.add_api_route("/api/boom", _boom)
    h = env.auth("alice")
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    with (
        live_server(app, log_level="critical") as url,
        httpx.Client(base_url=url, limits=limits, headers=h) as c,
    ):
        first = c.get("/api/me")
        assert first.status_code == 200
        answers = [
            c.get(f"/api/items/{10**23}"),
            c.post("/api/judgements", json={"assignment_id": 2**63, "choice": "left"}),
            c.post("/annotate/submit", data={"assignment_id": str(10**30), "choice": "left"}),
            c.post("/api/judgements", content=b'{"assignment_id": NaN, "choice": "left"}'),
            c.get("/api/boom"),
        ]
        assert [r.status_code for r in answers] == [422, 422, 422, 422, 500]
        last = c.get("/api/next")
        assert last.status_code == 200 and "assignment_id" in last.json()
        ports = {_local_port(r) for r in [first, *answers, last]}
        assert len(ports) == 1, f"the connection was re-opened: local ports {ports}"

"""Hypothesis strategies for HTTP requests, derived from an OpenAPI document (the subset FastAPI writes for rlivs:
`$ref`, `anyOf`, string/integer/number/boolean/null/object/array with their bounds, `required`,
`additionalProperties: false`).

Each operation's request is drawn in one of two modes:

- "valid": every parameter and the body satisfy the schema (the server may still refuse a valid-looking value for a
  reason the schema cannot state, e.g. a whitespace-only question: that must be a 4xx too);
- "hostile": each parameter is valid, missing, or hostile (wrong type, out of range by one or by 2**64, NaN/inf
  spelled out, empty, huge, control characters, NUL, right-to-left marks, unpaired surrogates escaped in JSON,
  path-traversal-looking text), and the body is a mutated object (fields missing, extra, of the wrong type) or raw
  bytes (not UTF-8, truncated JSON, deeply nested JSON, an empty body, a JSON array, a body over the size limit).

`override` replaces the strategy of named properties (the fuzz test gives `webhook` values that can only point at its
own loopback sink or be refused: fuzzing must never make the service call out to an arbitrary address).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from urllib.parse import quote

from hypothesis import strategies as st

INT64_MAX = 2**63 - 1
ODD_TEXT = ["", " ", "\x00", "a\x00b", "\t\n\r", "\u202egnp.\u202c", "💥" * 50, "ÿ" * 3, "%00", "%2e%2e%2f",
            "../../etc/passwd", "..", "/", "\\", "<script>alert(1)</script>", "' OR 1=1 --", "NaN", "-1", "1e999", "null", "{}", "[]",
            "x" * 5000]


@dataclass
class Operation:
    method: str
    path: str  # template, e.g. /v1/watches/{watch_id}
    params: list[dict] = field(default_factory=list)  # OpenAPI parameter objects
    body: dict | None = None  # JSON schema of the body, if any

    @property
    def name(self) -> str:
        return f"{self.method} {self.path}"


def operations(spec: dict) -> list[Operation]:
    ops = []
    for path, items in spec["paths"].items():
        for method, op in items.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            ops.append(Operation(method.upper(), path, op.get("parameters", []), body))
    return ops


def _resolve(schema: dict, spec: dict) -> dict:
    while "$ref" in schema:
        node = spec
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def _text(min_size: int = 0, max_size: int = 40) -> st.SearchStrategy[str]:
    # any code point but unpaired surrogates (those cannot be encoded into a URL or a header; they are sent inside
    # JSON bodies as \\udXXX escapes instead)
    return st.text(st.characters(exclude_categories=("Cs",)), min_size=min_size, max_size=max_size)


TIME_FIELDS = ("from", "to", "before", "after", "since", "until")  # time expressions: the time grammar below too
_UNITS = ("s", "m", "h", "d", "w", "seconds", "minutes", "hours", "days", "weeks", "months", "years")


def time_text() -> st.SearchStrategy[str]:
    """Time expressions as a client may send them, absurd ones first: huge or signed durations, years far outside any
    stream, extreme UTC offsets, and those inside questions ("99999999999 days ago")."""
    huge = st.one_of(st.integers(0, 10**25), st.sampled_from([0, 1, 2**31, 2**63, 10**11, 99999999999]))
    duration = st.builds(lambda sign, n, u: f"{sign}{n}{u}", st.sampled_from(["-", "+", ""]), huge, st.sampled_from(_UNITS))
    iso = st.builds(lambda y, mo, d, h, off: f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:00{off}", st.integers(1, 9999),
                    st.integers(1, 12), st.integers(1, 31), st.integers(0, 24),
                    st.sampled_from(["", "Z", "+14:00", "-12:00", "+99:99", ".5Z"]))
    day = st.builds(lambda y: f"{y:04d}-12-31", st.integers(1, 9999))
    phrase = st.builds(lambda n, u, form: form.format(n=n, u=u), huge, st.sampled_from(_UNITS[5:]),
                       st.sampled_from(["{n} {u} ago", "in the last {n} {u}", "what happened {n} {u} ago?",
                                        "what moved in the last {n} {u}?"]))
    return st.one_of(duration, iso, day, phrase, st.sampled_from(["on 9999-12-31", "what happened on 0001-01-01?",
                                                                  "yesterday", "tomorrow", "2999-01-01", "-0d"]))


def valid(schema: dict, spec: dict, override: dict | None = None, name: str | None = None) -> st.SearchStrategy:
    """Values that satisfy `schema`."""
    if override and name in override:
        return override[name]
    schema = _resolve(schema, spec)
    if "anyOf" in schema:
        return st.one_of([valid(s, spec, override) for s in schema["anyOf"]])
    t = schema.get("type")
    if t == "string":
        lo, hi = schema.get("minLength", 0), schema.get("maxLength", 200)
        parts = [_text(lo, min(hi, lo + 40))]
        if name in TIME_FIELDS or name == "question":  # time expressions, alone or inside the question
            parts.append(time_text().filter(lambda t: lo <= len(t) <= hi))
        if hi - lo > 40:
            parts.append(st.integers(lo, hi).map(lambda n: "a" * n))  # long, up to the bound
        return st.one_of(parts)
    if t == "integer":
        lo, hi = schema.get("minimum", -(2**31)), schema.get("maximum", 2**31)
        return st.one_of(st.integers(lo, min(hi, lo + 1000)), st.sampled_from([lo, hi]), st.integers(lo, hi))
    if t == "number":
        lo, hi = schema.get("minimum"), schema.get("maximum")
        return st.floats(min_value=lo, max_value=hi, allow_nan=False, allow_infinity=False)
    if t == "boolean":
        return st.booleans()
    if t == "null":
        return st.none()
    if t == "array":
        return st.lists(valid(schema.get("items", {}), spec, override), max_size=5)
    if t == "object":
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        return st.fixed_dictionaries(
            {k: valid(v, spec, override, k) for k, v in props.items() if k in required},
            optional={k: valid(v, spec, override, k) for k, v in props.items() if k not in required})
    return json_values()


def json_values() -> st.SearchStrategy:
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                        st.floats(allow_nan=False, allow_infinity=False), _text(0, 30), st.sampled_from(ODD_TEXT))
    return st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                         st.dictionaries(_text(0, 8), kids, max_size=4)), max_leaves=8)


def hostile(schema: dict, spec: dict) -> st.SearchStrategy:
    """Values that are wrong for `schema`, or valid but at an edge."""
    schema = _resolve(schema, spec)
    options = [json_values(), st.sampled_from(ODD_TEXT)]
    leaves = schema.get("anyOf", [schema])
    for s in leaves:
        if s.get("type") == "integer":
            lo, hi = s.get("minimum"), s.get("maximum")
            edges = [2**64, -(2**64), 10**30, 0, -1]
            edges += [lo - 1] if lo is not None else []
            edges += [hi + 1] if hi is not None else []
            options.append(st.sampled_from(edges))
            options.append(st.sampled_from(["1.5", "0x10", "1e3", "", " 1", "١٢"]))  # not plain integers
        if s.get("type") == "number":
            options.append(st.sampled_from([-1e308, 1e308, -0.0, 5e-324, -1.0000001, 1.0000001, "nan", "inf",
                                            "-inf", "1e999"]))
        if s.get("type") == "string":
            hi = s.get("maxLength")
            if hi is not None:
                options.append(st.just("b" * (hi + 1)))
            options.append(_text(0, 300))
    return st.one_of(options)


def _as_text(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return "" if value is None else str(value)


@dataclass
class Request:
    method: str
    path: str  # concrete, URL-encoded
    params: dict[str, str]
    headers: dict[str, str]
    json_body: object = None
    raw_body: bytes | None = None
    mode: str = "valid"
    operation: str = ""


_RAW_BODIES = [b"", b"{", b'{"question": ', b"[]", b"null", b"42", b'"text"', b"\xff\xfe\x00{}",
               b'{"question": "\xc3\x28"}', b'{"question": "keys \\ud800?"}', b'{"query": "\\udfff"}',
               b"[" * 5000 + b"]" * 5000, b'{"question": "' + b"x" * 70_000 + b'"}',
               b'{"question": "a", "question": "b"}', b'{"query": "door", "threshold": NaN}',
               b'{"query": "door", "threshold": Infinity}', b'{"question": "ok"}' + b"\x00" * 10]


@st.composite
def requests(draw, op: Operation, spec: dict, override: dict | None = None) -> Request:
    mode = draw(st.sampled_from(["valid", "hostile"]))
    path, params, headers = op.path, {}, {}
    for p in op.params:
        schema = p.get("schema", {})
        if mode == "valid":
            include = p.get("required") or draw(st.booleans())
            value = draw(valid(schema, spec, override, p["name"])) if include else None
        else:
            choice = draw(st.sampled_from(["valid", "hostile", "missing"] if not p.get("required")
                                          else ["valid", "hostile"]))
            include = choice != "missing"
            value = draw(valid(schema, spec, override, p["name"]) if choice == "valid" else hostile(schema, spec))
        if not include or value is None and not p.get("required"):
            continue
        text = _as_text(value)
        if p["in"] == "path":
            path = path.replace("{" + p["name"] + "}", quote(text, safe="") or "%20")
        elif p["in"] == "query":
            params[p["name"]] = text
        elif p["in"] == "header":
            headers[p["name"]] = "".join(c if " " <= c <= "~" else "?" for c in text)  # HTTP/1.1: printable ASCII
    req = Request(op.method, path, params, headers, mode=mode, operation=op.name)
    if op.body is not None:
        if mode == "valid":
            req.json_body = draw(valid(op.body, spec, override))
        else:
            kind = draw(st.sampled_from(["mutated", "mutated", "raw", "any"]))
            if kind == "raw":
                req.raw_body = draw(st.sampled_from(_RAW_BODIES))
            elif kind == "any":
                req.json_body = draw(json_values())
            else:
                schema = _resolve(op.body, spec)
                body = dict(draw(valid(schema, spec, override)))
                props = list(schema.get("properties", {}))
                for name in draw(st.lists(st.sampled_from(props), max_size=len(props), unique=True)):
                    action = draw(st.sampled_from(["hostile", "drop"]))
                    if action == "drop":
                        body.pop(name, None)
                    elif name in (override or {}):
                        body[name] = draw(override[name])
                    else:
                        body[name] = draw(hostile(schema["properties"][name], spec))
                if draw(st.booleans()):
                    body[draw(_text(1, 12))] = draw(json_values())  # an unknown field
                req.json_body = body
    return req

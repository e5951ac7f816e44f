"""The admin interface: unsigned JSON calls under ``/_admin/`` that drive a Simulator.

Meant for loopback use by tests, the demo and benchmarks in other processes.
API keys travel in JSON bodies (never in URLs, which end up in logs); answers
name clients by label only. Every call and its body is listed in docs/SIMULATOR.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from killswitch.exchange.signing import KeyLoadError
from killswitch.simulator.core import Reply, Simulator, parse_id, parse_query
from killswitch.simulator.faults import EndpointFaults, Races

ADMIN_PREFIX = "/_admin/"

AdminCall = Callable[[Simulator, dict[str, Any], dict[str, str]], Any]


class AdminError(ValueError):
    """A bad admin call: answered 400 with the message."""


def _json(status: int, data: Any) -> Reply:
    return Reply(status, json.dumps(data, separators=(",", ":")).encode())


def _str(body: dict[str, Any], name: str, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise AdminError(f"{name} must be a non-empty string")
    return value


def _api_key(body: dict[str, Any]) -> str:
    value = _str(body, "api_key")
    assert value is not None
    return value


def _number(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AdminError(f"{name} must be a number or null")
    return float(value)


def _int(body: dict[str, Any], name: str, default: int | None = None) -> int | None:
    value = body.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise AdminError(f"{name} must be an integer")
    return value


# ----------------------------------------------------------------------- calls


def _health(sim: Simulator, body: dict[str, Any], query: dict[str, str]) -> Any:
    return {"ok": True}


def _state(sim: Simulator, body: dict[str, Any], query: dict[str, str]) -> Any:
    return {
        "symbols": sim.symbols,
        "clients": sim.client_labels(),
        "rate_limits": sim.rate_limits(),
        "faults": sim.fault_settings(),
        "races": sim.races.to_dict(),
        "spawned": sim.spawned,
        "clock_offset_ms": sim.clock_offset_ms,
        "time_window_ms": sim.time_window_ms,
        "server_time_ms": sim.now_ms(),
        "exchange": sim.knobs(),
    }


def _add_client(sim: Simulator, body: dict[str, Any], query: dict[str, str]) -> Any:
    public_key = _str(body, "public_key")
    assert public_key is not None
    encoding = body.get("signature_encoding", "base64-der")
    try:
        label = sim.add_client(
            _api_key(body),
            public_key,
            signature_encoding=encoding,
            rate_limit_per_second=_number(body, "rate_limit_per_second"),
            burst=_int(body, "burst"),
            name=_str(body, "name", required=False),
        )
    except KeyLoadError as exc:
        raise AdminError(f"public_key: {exc}") from None
    return {"client": label}


def _revoke(sim: Simulator, body: dict[str, Any], query: dict[str, str]) -> Any:
    sim.revoke(_api_key(body))
    return {"revoked": True}


def _reinstate(sim: Simulator, body: dict[str, Any], query: dict[str, str]) -> Any:
    sim.reinstate(_api_key(body))
    return {"revoked": False}


def _seed(sim: Simulator, body: dict[str, Any], query: dict[str, str]) -> Any:
    symbol = _str(body, "symbol")
    assert symbol is not None
    count = _int(body, "count", 1)
    assert count is not None
    ids = sim.seed_orders(
        _api_key(body),
        symbol,
        count,
        side=_str(body, "side", required=False),
        price=_str(body, "price", required=False),
        quantity=_str(body, "quantity", required=False),
    )
    return {"count": len(ids), "order_ids": ids}


def _open_ids(sim: Simulator, body: dict[str, Any], query: dict[str, str]) -> Any:
    ids = sim.open_order_ids(_api_key(body), _str(body, "symbol", required=False))
    return {"count": len(ids), "order_ids": sorted(ids)}


def _close_order(sim: Simulator, body: dict[str, Any], query: dict[str, str]) -> Any:
    order_id = _int(body, "order_id")
    status = _str(body, "status", required=False) or "FILLED"
    if order_id is None or sim.order(order_id) is None:
        raise AdminError("order_id must be an existing order id")
    sim.close_order(order_id, status)
    return sim.order(order_id)


def _get_order(sim: Simulator, body: dict[str, Any], query: dict[str, str]) -> Any:
    order_id = parse_id(query.get("order_id"))
    order = None if order_id is None else sim.order(order_id)
    if order is None:
        raise KeyError("no such order")
    return order


def apply_faults(sim: Simulator, spec: dict[str, Any]) -> None:
    """Apply ``{"all": {...}, "<endpoint>": {...}}`` ("all" first; it resets the rest)."""
    if not isinstance(spec, dict):
        raise AdminError("faults must be a JSON object keyed by endpoint or 'all'")
    if "all" in spec:
        sim.set_faults(EndpointFaults.from_dict(_obj(spec["all"], "all")))
    for endpoint, settings in spec.items():
        if endpoint != "all":
            sim.set_faults(EndpointFaults.from_dict(_obj(settings, endpoint)), endpoint)


def _obj(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise AdminError(f"{name}: expected a JSON object")
    return value


def _set_faults(sim: Simulator, body: dict[str, Any], query: dict[str, str]) -> Any:
    apply_faults(sim, body)
    return sim.fault_settings()


def _clear_faults(sim: Simulator, body: dict[str, Any], query: dict[str, str]) -> Any:
    sim.clear_faults()
    return sim.fault_settings()


def _set_races(sim: Simulator, body: dict[str, Any], query: dict[str, str]) -> Any:
    races = Races.from_dict(body)
    sim.set_races(
        races.close_before_cancel, races.spawn_on_cancel, races.max_spawned, races.lose_cancel
    )
    return sim.races.to_dict()


def _set_limits(sim: Simulator, body: dict[str, Any], query: dict[str, str]) -> Any:
    rate = _number(body, "rate_limit_per_second")
    burst = _int(body, "burst")
    if body.get("global"):
        sim.set_global_rate_limit(rate, burst)
    else:
        key = _str(body, "api_key", required=False)
        sim.set_rate_limit(rate, burst, api_key=key)
    return sim.rate_limits()


def _set_clock(sim: Simulator, body: dict[str, Any], query: dict[str, str]) -> Any:
    offset = _int(body, "clock_offset_ms")
    window = _int(body, "time_window_ms")
    if offset is not None:
        sim.clock_offset_ms = offset
    if window is not None:
        if window < 0:
            raise AdminError("time_window_ms must be >= 0")
        sim.time_window_ms = window
    return {"clock_offset_ms": sim.clock_offset_ms, "time_window_ms": sim.time_window_ms}


_EXCHANGE_FIELDS = frozenset(
    {
        "public_auth",
        "unknown_symbol",
        "rate_limit_kind",
        "sliding_window_s",
        "retry_after_on_429",
        "replay_protection",
        "throttle_window",
        "redirect",
    }
)
_BOOL_KNOBS = ("public_auth", "retry_after_on_429", "replay_protection")


def apply_exchange(sim: Simulator, body: dict[str, Any]) -> None:
    """Set the knobs named in ``body`` (see docs/SIMULATOR.md); the others stay.

    A ``throttle_window`` object sets a new window, null clears it; a ``redirect``
    object adds a redirect, null clears them all. Raises ValueError (nothing
    applied) for an unknown field or a bad value: the whole body is first tried on
    a scratch simulator.
    """
    unknown = sorted(set(body) - _EXCHANGE_FIELDS)
    if unknown:
        raise AdminError(f"unknown exchange setting(s): {', '.join(unknown)}")
    _apply_exchange(Simulator(symbols=()), body)
    _apply_exchange(sim, body)


def _apply_exchange(sim: Simulator, body: dict[str, Any]) -> None:
    for name in _BOOL_KNOBS:
        if name in body:
            if not isinstance(body[name], bool):
                raise AdminError(f"{name} must be true or false")
            setattr(sim, name, body[name])
    if "unknown_symbol" in body:
        sim.unknown_symbol = body["unknown_symbol"]
    if "rate_limit_kind" in body or "sliding_window_s" in body:
        window = body.get("sliding_window_s", sim.sliding_window_s)
        sim.set_rate_limit_kind(body.get("rate_limit_kind", sim.rate_limit_kind), window)
    if "throttle_window" in body:
        _apply_throttle_window(sim, body["throttle_window"])
    if "redirect" in body:
        _apply_redirect(sim, body["redirect"])


def _apply_throttle_window(sim: Simulator, spec: Any) -> None:
    if spec is None:
        sim.clear_throttle_window()
        return
    spec = _fields(spec, "throttle_window", {"after_requests", "duration_s", "retry_after"})
    retry_after = spec.get("retry_after", "seconds")
    # "none" (as on the command line) and JSON null both mean: no Retry-After header.
    sim.set_throttle_window(
        spec.get("after_requests", 0),
        spec.get("duration_s"),
        None if retry_after == "none" else retry_after,
    )


def _apply_redirect(sim: Simulator, spec: Any) -> None:
    if spec is None:
        sim.clear_redirects()
        return
    spec = _fields(spec, "redirect", {"status", "location", "endpoint"})
    endpoint = spec.get("endpoint")
    sim.set_redirect(
        spec.get("location"), spec.get("status", 307), None if endpoint == "all" else endpoint
    )


def _fields(value: Any, name: str, known: set[str]) -> dict[str, Any]:
    spec = _obj(value, name)
    extra = sorted(set(spec) - known)
    if extra:
        raise AdminError(f"{name}: unknown field(s): {', '.join(extra)}")
    return spec


def _set_exchange(sim: Simulator, body: dict[str, Any], query: dict[str, str]) -> Any:
    apply_exchange(sim, body)
    return sim.knobs()


def _counters(sim: Simulator, body: dict[str, Any], query: dict[str, str]) -> Any:
    return {"counters": sim.counters, "throttled": sim.throttled, "spawned": sim.spawned}


def _log(sim: Simulator, body: dict[str, Any], query: dict[str, str]) -> Any:
    since = parse_id(query.get("since", "0"), minimum=0)
    limit = parse_id(query.get("limit")) if "limit" in query else None
    if since is None:
        raise AdminError("since must be a non-negative integer")
    entries = sim.log_since(since, limit)
    last = entries[-1].seq if entries else since
    return {"entries": [e.to_dict() for e in entries], "last_seq": last}


def _reset(sim: Simulator, body: dict[str, Any], query: dict[str, str]) -> Any:
    sim.reset(clients=bool(body.get("clients", False)))
    return {"reset": True}


_WRITE = ("POST", "PUT")
_ROUTES: dict[tuple[str, str], AdminCall] = {
    ("GET", "health"): _health,
    ("GET", "state"): _state,
    ("GET", "counters"): _counters,
    ("GET", "log"): _log,
    ("GET", "order"): _get_order,
    ("DELETE", "faults"): _clear_faults,
}
for _method in _WRITE:
    _ROUTES.update(
        {
            (_method, "clients"): _add_client,
            (_method, "revoke"): _revoke,
            (_method, "reinstate"): _reinstate,
            (_method, "orders"): _seed,
            (_method, "orders/open"): _open_ids,
            (_method, "orders/close"): _close_order,
            (_method, "faults"): _set_faults,
            (_method, "races"): _set_races,
            (_method, "limits"): _set_limits,
            (_method, "clock"): _set_clock,
            (_method, "exchange"): _set_exchange,
            (_method, "reset"): _reset,
        }
    )


def handle_admin(sim: Simulator, method: str, path: str, query: str, body: bytes) -> Reply:
    """Answer one admin call; never raises for bad input."""
    name = path[len(ADMIN_PREFIX) :].rstrip("/")
    call = _ROUTES.get((method, name))
    if call is None:
        return _json(404, {"error": "not_found", "message": f"no admin call {method} {name}"})
    params = parse_query(query) or {}
    try:
        data = json.loads(body) if body else {}
        if not isinstance(data, dict):
            raise AdminError("body must be a JSON object")
        return _json(200, call(sim, data, params))
    except KeyError:
        return _json(404, {"error": "not_found", "message": "unknown api key or order"})
    except (ValueError, TypeError, RecursionError) as exc:  # AdminError, JSON, settings
        return _json(400, {"error": "invalid_request", "message": str(exc)})

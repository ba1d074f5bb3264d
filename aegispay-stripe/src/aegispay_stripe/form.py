"""Stripe's form encoding: ``application/x-www-form-urlencoded`` with bracket nesting.

``{"metadata": {"order": "42"}, "payment_method_types": ["card"]}`` is sent as
``metadata[order]=42&payment_method_types[0]=card``. Stripe's own libraries index list items
(``[0]``); the API also accepts ``[]``, which :func:`decode_form` reads too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode

__all__ = ["FormValue", "decode_form", "encode_form"]

FormValue = str | int | bool | Mapping[str, Any] | Sequence[Any] | None


def _scalar(value: str | int | bool) -> str:
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "true" if value else "false"
    return str(value)


def _flatten(prefix: str, value: Any, out: list[tuple[str, str]]) -> None:
    if value is None:
        return  # an absent parameter, never the string "None"
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(f"{prefix}[{key}]" if prefix else str(key), item, out)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _flatten(f"{prefix}[{index}]", item, out)
    elif isinstance(value, str | int):
        out.append((prefix, _scalar(value)))
    else:
        # Floats and other objects have no place in a Stripe request (amounts are integers).
        raise TypeError(f"{prefix}: cannot form-encode {type(value).__name__}")


def encode_form(params: Mapping[str, Any]) -> str:
    """``params`` as a Stripe form body; None values are left out."""
    pairs: list[tuple[str, str]] = []
    _flatten("", params, pairs)
    return urlencode(pairs)


def _path(name: str) -> list[str]:
    """``"metadata[order]"`` -> ``["metadata", "order"]``; ``"a[]"`` -> ``["a", ""]``."""
    head, bracket, rest = name.partition("[")
    parts = [head]
    while bracket:
        inner, _, rest = rest.partition("]")
        parts.append(inner)
        _, bracket, rest = rest.partition("[")
    return parts


def _to_lists(node: Any) -> Any:
    """Tables whose keys are all list indexes become lists (in index order)."""
    if not isinstance(node, dict):
        return node
    converted = {key: _to_lists(value) for key, value in node.items()}
    if converted and all(isinstance(key, int) for key in converted):
        return [converted[key] for key in sorted(converted)]
    return {str(key): value for key, value in converted.items()}


def decode_form(body: str) -> dict[str, Any]:
    """A Stripe form body back to nested dicts and lists of strings (for the fake server).

    Raises ValueError for a parameter that is both a value and a table (``a=1&a[b]=2``).
    """
    root: dict[Any, Any] = {}
    appended: dict[int, int] = {}  # id(table) -> next index for "[]" items
    for name, value in parse_qsl(body, keep_blank_values=True, strict_parsing=False):
        parts = _path(name)
        node = root
        for depth, part in enumerate(parts):
            key: Any = part
            if part == "" and depth > 0:
                key = appended.get(id(node), 0)
                appended[id(node)] = key + 1
            elif part.isdigit() and depth > 0:
                key = int(part)
            last = depth == len(parts) - 1
            if last:
                if isinstance(node.get(key), dict):
                    raise ValueError(f"{name}: given both as a value and as a table")
                node[key] = value
            else:
                child = node.setdefault(key, {})
                if not isinstance(child, dict):
                    raise ValueError(f"{name}: given both as a value and as a table")
                node = child
    result = _to_lists(root)
    assert isinstance(result, dict)
    return result

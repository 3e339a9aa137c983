"""``--params`` read as ``kedro run --params`` reads it, and runtime parameters merged."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf


def parse_params(text: str) -> dict[str, Any]:
    """``a.b=1,c=x`` → ``{"a": {"b": 1}, "c": "x"}``, as kedro 1.7's ``kedro run --params`` reads it
    (``kedro.framework.cli.utils._split_params``, private, and a click callback): items split on commas,
    each ``key=value`` with a dotted key, given to ``OmegaConf.from_dotlist``, which reads each value
    as YAML (``1`` an int, ``3e-3`` a float, ``true`` a bool, ``null`` None, the rest strings)."""
    dotlist = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--params: {item!r} is not key=value")
        dotlist.append(f"{key.strip()}={value}")
    return OmegaConf.to_container(OmegaConf.from_dotlist(dotlist))


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` on top, nested dictionaries merged key by key; neither is changed."""
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = merge(merged.get(key, {}), value) if isinstance(value, dict) else value
    return merged

"""Dump a TensorRT Python module's API as JSON (run in a subprocess: python introspect.py MODULE).

For each public name: a class (its methods with the pybind signatures from the first line(s) of
``__doc__``, its properties with their type and whether they can be set), an enum (members and
values) or a function. Output: one JSON object on stdout.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import sys


def _signatures(name: str, doc: str | None) -> list[str]:
    """pybind signature lines ``name(...) -> R`` of a (maybe overloaded) function's doc."""
    if not doc:
        return []
    pattern = re.compile(rf"^(?:\d+\. )?{re.escape(name)}\((.*)\)(?: -> (.*))?$")
    found = [line.strip() for line in doc.splitlines() if pattern.match(line.strip())]
    real = [s for s in found if "*args, **kwargs" not in s]
    return real or found[:1]


def _python_signature(name: str, fn) -> list[str]:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return []
    return [f"{name}{sig}".replace("'", "")]


def _callable(name: str, fn) -> dict:
    sigs = _signatures(name, getattr(fn, "__doc__", None))
    if not sigs and inspect.isfunction(fn):
        sigs = _python_signature(name, fn)
    return {"kind": "method", "signatures": sigs}


def _is_enum(cls) -> bool:
    return isinstance(getattr(cls, "__members__", None), dict) and hasattr(cls, "name")


def describe_class(cls) -> dict:
    if _is_enum(cls):
        return {"kind": "enum", "members": {k: int(v) for k, v in cls.__members__.items()}}
    members = {}
    for name in dir(cls):
        if name.startswith("_") and name != "__init__":
            continue
        raw = inspect.getattr_static(cls, name, None)
        if isinstance(raw, property):
            doc = raw.fget.__doc__ if raw.fget else ""
            ret = re.search(r"-> (.+)$", (doc or "").strip().splitlines()[0]) if doc else None
            members[name] = {"kind": "property", "writable": raw.fset is not None,
                             "type": ret.group(1) if ret else None}
        elif isinstance(raw, (staticmethod, classmethod)):
            members[name] = _callable(name, getattr(cls, name))
        elif callable(raw):
            members[name] = _callable(name, raw)
        elif name in getattr(cls, "__members__", {}):
            continue
        else:
            members[name] = {"kind": "attribute", "type": type(raw).__name__}
    return {"kind": "class", "members": members,
            "bases": [b.__name__ for b in cls.__mro__[1:] if b.__name__ != "object"]}


def _returned_type(name: str, fn, sigs: list[str]) -> str | None:
    """The class a no-argument getter returns when its signature cannot say (pybind's
    ``get_plugin_registry() -> detail::accessor<...>``). Only called over real libraries:
    a stand-in's NULL must not be dereferenced."""
    if os.environ.get("STN_INTROSPECT_CALL") != "1" or not sigs or "detail::" not in sigs[0]:
        return None
    if not re.match(rf"^{re.escape(name)}\(\)", sigs[0]):
        return None
    return type(fn()).__name__


def describe(module) -> dict:
    api = {}
    for name in dir(module):
        if name.startswith("_"):
            continue
        obj = getattr(module, name)
        if inspect.isclass(obj):
            api[name] = describe_class(obj)
        elif callable(obj):
            api[name] = {**_callable(name, obj), "kind": "function"}
            returned = _returned_type(name, obj, api[name]["signatures"])
            if returned:
                api[name]["returns"] = returned
        elif isinstance(obj, (int, float, str)):
            api[name] = {"kind": "value", "type": type(obj).__name__}
        elif inspect.ismodule(obj):
            continue
        else:
            api[name] = {"kind": "value", "type": type(obj).__name__}
    return api


def main(module_name: str) -> None:
    module = importlib.import_module(module_name)
    api = describe(module)
    if "nptype" in api and "DataType" in api:  # which TensorRT types numpy can hold
        table = {}
        for name, member in module.DataType.__members__.items():
            try:
                table[name] = __import__("numpy").dtype(module.nptype(member)).name
            except TypeError:
                table[name] = "TypeError"
        api["nptype"]["table"] = table
    for name in ("__version__", "__name__"):  # what our code reads off the module itself
        api[name] = {"kind": "value", "type": "str"}
    out = {"module": module_name, "version": module.__version__, "api": api}
    json.dump(out, sys.stdout, sort_keys=True)


if __name__ == "__main__":
    main(sys.argv[1])

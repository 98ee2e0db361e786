"""Find every use of the TensorRT Python API in our source (ast) and check it against a real dump.

Types are followed, not guessed from names: ``trt`` (a parameter of that name, or the result of
``import_tensorrt()``) is the module; ``trt.Builder(logger)`` is a ``Builder``; a method call's
type is the return type of its pybind signature; ``self.x = ...`` and dataclass fields keep
their type across methods; arguments of calls between our own functions carry their types into
the callee (repeated until nothing changes). Each use is then checked per TensorRT version:
the name exists, it is the same kind (method vs property), a property that is assigned is
writable, and a call's arguments fit one pybind overload (count and keyword names).

A line may say it runs only on some versions with a comment ``# trt-api: 10`` (``10``, ``11``,
``rtx``); attributes read through ``hasattr``/``getattr`` with a default are optional.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

IMPORTERS = {"import_tensorrt", "_import_trt"}
MODULE = ("module",)


@dataclass(frozen=True)
class Use:
    file: str
    line: int
    receiver: tuple  # ("module",) | ("inst", Class) | ("class", Class) | ("enum", Enum)
    attr: str
    how: str  # "call" | "load" | "store"
    nargs: int = 0
    keywords: tuple[str, ...] = ()
    optional: bool = False
    only: tuple[str, ...] = ()  # targets this line runs on ("10", "11", "rtx"); () = all

    def where(self) -> str:
        owner = "trt" if self.receiver == MODULE else self.receiver[1]
        return f"{self.file}:{self.line}: {owner}.{self.attr}"


def _short(type_text: str | None) -> str | None:
    """'tensorrt_bindings.tensorrt.ICudaEngine' -> 'ICudaEngine' (None for containers)."""
    if not type_text:
        return None
    text = type_text.strip()
    if "[" in text or " " in text:
        return None
    return text.rsplit(".", 1)[-1]


# -- signatures ----------------------------------------------------------------------------------
def _split_params(text: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[(<":
            depth += 1
        elif ch in "])>":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


@dataclass(frozen=True)
class Signature:
    params: tuple[str, ...]  # names, without self
    required: int
    varargs: bool
    returns: str | None

    def fits(self, nargs: int, keywords: tuple[str, ...]) -> bool:
        if self.varargs:
            return True
        if nargs > len(self.params):
            return False
        names = self.params[nargs:]
        if any(k not in names for k in keywords):
            return False
        bound = nargs + len(keywords)
        return bound >= self.required and all(
            p in keywords for p in self.params[nargs:self.required]
        )


def parse_signature(line: str) -> Signature:
    match = re.match(r"^(?:\d+\. )?\w+\((.*)\)(?: -> (.*))?$", line.strip())
    if match is None:
        return Signature((), 0, True, None)
    params, required, varargs = [], 0, False
    for i, raw in enumerate(_split_params(match.group(1))):
        name = raw.split(":", 1)[0].split("=", 1)[0].strip()
        if name.startswith("*"):
            varargs = True
            continue
        if i == 0 and name == "self":
            continue
        params.append(name)
        if "=" not in raw:
            required = len(params)
    return Signature(tuple(params), required, varargs, match.group(2))


# -- the analysis --------------------------------------------------------------------------------
@dataclass
class _Func:
    module: str
    cls: str | None
    node: ast.FunctionDef
    params: dict[str, tuple] = field(default_factory=dict)


class Analyzer:
    """Collects :class:`Use` records from sources, given one API dump for member types."""

    def __init__(self, api: dict) -> None:
        self.api = api
        self.funcs: dict[tuple[str, str | None, str], _Func] = {}
        self.imports: dict[str, dict[str, tuple[str, str | None]]] = {}
        self.dataclasses: dict[tuple[str, str], list[str]] = {}
        self.attr_types: dict[tuple[str, str, str], tuple] = {}
        self.lines: dict[str, list[str]] = {}
        self.uses: set[Use] = set()
        self.recording = False

    # indexing
    def add_source(self, name: str, text: str) -> None:
        tree = ast.parse(text)
        self.lines[name] = text.splitlines()
        imports: dict[str, tuple[str, str | None]] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    local = alias.asname or alias.name
                    mod = node.module.rsplit(".", 1)[-1]
                    imports[local] = (mod, alias.name)  # module.func or package.module
        self.imports[name] = imports
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.funcs[(name, None, node.name)] = _Func(name, None, node)
            elif isinstance(node, ast.ClassDef):
                if any(_decorator_name(d) == "dataclass" for d in node.decorator_list):
                    self.dataclasses[(name, node.name)] = [
                        s.target.id for s in node.body
                        if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
                    ]
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        self.funcs[(name, node.name, item.name)] = _Func(name, node.name, item)
        # nested functions (closures) are analysed with their parent's variables

    def run(self, passes: int = 4) -> set[Use]:
        for _ in range(passes):
            for func in list(self.funcs.values()):
                self._function(func)
        self.recording = True
        for func in self.funcs.values():
            self._function(func)
        return self.uses

    # api lookups
    def _member(self, cls: str, attr: str) -> dict | None:
        entry = self.api.get(cls)
        return entry.get("members", {}).get(attr) if entry and entry["kind"] == "class" else None

    def _returns(self, sigs: list[str]) -> tuple | None:
        for line in sigs:
            short = _short(parse_signature(line).returns)
            if short and short in self.api:
                kind = self.api[short]["kind"]
                return ("inst", short) if kind == "class" else ("enumval", short)
        return None

    # functions
    def _function(self, func: _Func) -> None:
        env: dict[str, tuple] = {}
        args = func.node.args
        for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs]:
            if arg.arg == "trt":
                env["trt"] = MODULE
            elif arg.arg == "self" and func.cls:
                env["self"] = ("local", func.module, func.cls)
            elif arg.arg in func.params:
                env[arg.arg] = func.params[arg.arg]
            elif isinstance(arg.annotation, ast.Name) and (func.module, arg.annotation.id) in \
                    self.dataclasses:  # fmt: skip
                env[arg.arg] = ("local", func.module, arg.annotation.id)
        self._block(func.node.body, env, func)

    def _block(self, body, env, func) -> None:
        for stmt in body:
            self._stmt(stmt, env, func)

    def _stmt(self, stmt, env, func) -> None:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            inner = dict(env)
            if isinstance(stmt, ast.ClassDef):
                for base in stmt.bases:
                    self._overrides(self._expr(base, inner, func), stmt, func)
            self._block(stmt.body, inner, func)
            return
        if isinstance(stmt, ast.Assign):
            value = self._expr(stmt.value, env, func)
            for target in stmt.targets:
                self._assign(target, value, env, func)
            return
        if isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            self._assign(stmt.target, self._expr(stmt.value, env, func), env, func)
            return
        if isinstance(stmt, ast.AugAssign):
            self._expr(stmt.value, env, func)
            self._expr(stmt.target, env, func)
            return
        self._generic(stmt, env, func)

    def _generic(self, stmt, env, func) -> None:
        for child in ast.iter_child_nodes(stmt):
            if isinstance(child, ast.stmt):
                self._stmt(child, env, func)
            elif isinstance(child, ast.expr):
                self._expr(child, env, func)
            elif isinstance(child, (ast.withitem, ast.excepthandler, ast.comprehension)):
                for sub in ast.iter_child_nodes(child):
                    (self._stmt if isinstance(sub, ast.stmt) else self._expr)(sub, env, func)

    def _overrides(self, base, cls: ast.ClassDef, func) -> None:
        """A subclass of a TensorRT class (an IProgressMonitor): what it overrides must exist."""
        if base is None or base[0] != "class":
            return
        for item in cls.body:
            if isinstance(item, ast.FunctionDef) and not item.name.startswith("_"):
                node = ast.Attribute(value=ast.Name("self"), attr=item.name, lineno=item.lineno)
                self._use(base, node, "override", func)

    def _assign(self, target, value, env, func) -> None:
        if isinstance(target, ast.Name):
            if value is not None:
                env[target.id] = value
        elif isinstance(target, ast.Attribute):
            owner = self._expr(target.value, env, func)
            if owner and owner[0] == "local" and value is not None:
                self.attr_types[(owner[1], owner[2], target.attr)] = value
            else:
                self._use(owner, target, "store", func)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for elt in target.elts:
                self._assign(elt, None, env, func)

    # expressions
    def _expr(self, node, env, func, how: str = "load") -> tuple | None:
        if node is None:
            return None
        if isinstance(node, ast.Name):
            return env.get(node.id, MODULE if node.id == "trt" else None)
        if isinstance(node, ast.Attribute):
            owner = self._expr(node.value, env, func)
            return self._attribute(owner, node, how, func)
        if isinstance(node, ast.Call):
            return self._call(node, env, func)
        if isinstance(node, ast.Lambda):
            self._expr(node.body, dict(env), func)
            return None
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                self._expr(child, env, func)
            elif isinstance(child, ast.comprehension):
                for sub in ast.iter_child_nodes(child):
                    self._expr(sub, env, func)
        return None

    def _attribute(self, owner, node: ast.Attribute, how: str, func, optional=False):
        if owner is None:
            return None
        if owner[0] == "local":
            return self.attr_types.get((owner[1], owner[2], node.attr))
        self._use(owner, node, how, func, optional=optional)
        attr = node.attr
        if owner == MODULE:
            entry = self.api.get(attr)
            if entry is None:
                return None
            kinds = {"class": "class", "enum": "enum", "function": "func"}
            return (kinds.get(entry["kind"], "value"), attr)
        if owner[0] == "enum":
            return ("enumval", owner[1])
        if owner[0] in ("inst", "class"):
            member = self._member(owner[1], attr)
            if member is None:
                return None
            if member["kind"] == "property":
                short = _short(member.get("type"))
                return ("inst", short) if short in self.api else None
            if member["kind"] == "method":
                return ("bound", owner[1], attr)
        return None

    def _call(self, node: ast.Call, env, func) -> tuple | None:
        for arg in node.args:
            self._expr(arg.value if isinstance(arg, ast.Starred) else arg, env, func)
        for kw in node.keywords:
            self._expr(kw.value, env, func)
        fn = node.func
        if isinstance(fn, ast.Name) and fn.id in ("hasattr", "getattr") and len(node.args) >= 2:
            target = self._expr(node.args[0], env, func)
            name = node.args[1]
            if isinstance(name, ast.Constant) and isinstance(name.value, str) and target:
                fake = ast.Attribute(value=node.args[0], attr=name.value, lineno=node.lineno)
                optional = fn.id == "hasattr" or len(node.args) > 2
                result = self._attribute(target, fake, "load", func, optional=optional)
                return result if fn.id == "getattr" else None
            return None
        if isinstance(fn, ast.Name) and fn.id in IMPORTERS:
            return MODULE
        if isinstance(fn, ast.Attribute):
            owner = self._expr(fn.value, env, func)
            callee = self._attribute(owner, fn, "call", func) if owner and owner[0] != "local" \
                else None  # fmt: skip
            if owner is not None and owner[0] != "local":
                self._record_args(owner, fn, node, func)
                return self._result(callee)
            self._propagate(self._resolve_method(fn, owner, func), node, env, func)
            return None
        if isinstance(fn, ast.Name):
            local = self._resolve_name(fn.id, func)
            if local is not None and local[0] == "dataclass":
                fields = self.dataclasses[(local[1], local[2])]
                for name, arg in zip(fields, node.args):
                    value = self._expr(arg, env, func)
                    if value is not None:
                        self.attr_types[(local[1], local[2], name)] = value
                return ("local", local[1], local[2])
            self._propagate(local, node, env, func)
        return None

    def _result(self, callee) -> tuple | None:
        if callee is None:
            return None
        if callee[0] == "class":
            return ("inst", callee[1])
        if callee[0] == "bound":
            member = self._member(callee[1], callee[2]) or {}
            return self._returns(member.get("signatures", []))
        if callee[0] == "func":
            entry = self.api[callee[1]]
            if entry.get("returns") in self.api:  # what calling it returned (introspect.py)
                return ("inst", entry["returns"])
            return self._returns(entry.get("signatures", []))
        return None

    def _record_args(self, owner, fn: ast.Attribute, node: ast.Call, func) -> None:
        """Replace the last recorded call use of ``fn`` with one that knows its arguments."""
        if not self.recording:
            return
        keywords = tuple(k.arg for k in node.keywords if k.arg)
        star = any(isinstance(a, ast.Starred) for a in node.args)
        explicit_self = 1 if owner[0] == "class" else 0  # Base.__init__(self): self is passed
        for use in list(self.uses):
            if use.line == fn.lineno and use.attr == fn.attr and use.how == "call" \
                    and use.file == func.module and use.receiver == owner:  # fmt: skip
                self.uses.discard(use)
                self.uses.add(Use(use.file, use.line, use.receiver, use.attr, "call",
                                  -1 if star else len(node.args) - explicit_self, keywords,
                                  use.optional,
                                  use.only))  # fmt: skip

    # calls between our own functions
    def _resolve_name(self, name: str, func: _Func):
        if (func.module, None, name) in self.funcs:
            return ("func", func.module, None, name)
        if (func.module, name) in self.dataclasses:
            return ("dataclass", func.module, name)
        mod, orig = self.imports.get(func.module, {}).get(name, (None, None))
        for key in self.funcs:
            if key[1] is None and key[2] == orig and Path(key[0]).stem == mod:
                return ("func", key[0], None, orig)
        return None

    def _resolve_method(self, fn: ast.Attribute, owner, func: _Func):
        if owner is not None and owner[0] == "local":
            key = (owner[1], owner[2], fn.attr)
            return ("func", *key) if key in self.funcs else None
        if isinstance(fn.value, ast.Name):  # module.function (from stn_deploy.x import module)
            mod, orig = self.imports.get(func.module, {}).get(fn.value.id, (None, None))
            target = orig or fn.value.id
            for key in self.funcs:
                if key[1] is None and key[2] == fn.attr and Path(key[0]).stem == target:
                    return ("func", *key)
        return None

    def _propagate(self, callee, node: ast.Call, env, func) -> None:
        if callee is None or callee[0] != "func":
            return
        target = self.funcs[callee[1:]]
        args = target.node.args
        names = [a.arg for a in [*args.posonlyargs, *args.args]]
        if target.cls is not None and names and names[0] == "self":
            names = names[1:]
        for name, arg in zip(names, node.args):
            value = self._expr(arg, env, func)
            if value is not None and value[0] in ("inst", "module"):
                target.params[name] = value
        for kw in node.keywords:
            value = self._expr(kw.value, env, func)
            if kw.arg and value is not None and value[0] in ("inst", "module"):
                target.params[kw.arg] = value

    def _use(self, owner, node: ast.Attribute, how: str, func, optional: bool = False) -> None:
        if not self.recording or owner is None or owner[0] not in ("module", "inst", "class",
                                                                   "enum"):  # fmt: skip
            return
        if node.attr.startswith("__") and node.attr not in ("__init__", "__version__",
                                                            "__name__"):  # fmt: skip
            return
        line = self.lines[func.module][node.lineno - 1] if node.lineno else ""
        marker = re.search(r"#.*trt-api:\s*([\w, ]+)", line)
        only = tuple(t.strip() for t in marker.group(1).split(",")) if marker else ()
        self.uses.add(Use(func.module, node.lineno, owner, node.attr, how, 0, (), optional,
                          only))  # fmt: skip


def _decorator_name(node) -> str:
    target = node.func if isinstance(node, ast.Call) else node
    return target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")


# -- checking ------------------------------------------------------------------------------------
def check(uses, api: dict, target: str) -> list[str]:
    """Problems of ``uses`` against one API dump; ``target`` is "10", "11" or "rtx"."""
    problems = []
    for use in sorted(uses, key=lambda u: (u.file, u.line, u.attr, u.how)):
        if use.only and target not in use.only:
            continue
        problem = _problem(use, api)
        if problem and not (use.optional and problem.endswith("does not exist")):
            problems.append(f"{use.where()}: {problem}")
    return problems


def _problem(use: Use, api: dict) -> str | None:
    kind, owner = use.receiver[0], (use.receiver[1] if len(use.receiver) > 1 else None)
    if kind == "module":
        entry = api.get(use.attr)
        if entry is None:
            return "does not exist"
        if use.how == "call":
            sigs = (entry.get("members", {}).get("__init__", {}).get("signatures", [])
                    if entry["kind"] == "class" else entry.get("signatures", []))
            return _fit(sigs, use)
        return None
    if kind == "enum":
        members = api.get(owner, {}).get("members", {})
        return None if use.attr in members else "does not exist"
    member = api.get(owner, {}).get("members", {}).get(use.attr)
    if member is None:
        return "does not exist"
    return _member_problem(member, use)


def _member_problem(member: dict, use: Use) -> str | None:
    if member["kind"] == "property":
        if use.how == "call":
            return "is a property, not a method: drop the ()"
        if use.how == "store" and not member.get("writable"):
            return "is a read-only property"
        return None
    if use.how == "override":
        return None if member["kind"] == "method" else f"is a {member['kind']}, not a method"
    if member["kind"] == "method":
        if use.how == "store":
            return "is a method, not a settable property"
        if use.how == "load":
            return "is a method: call it"
        return _fit(member.get("signatures", []), use)
    return None


def _fit(signatures: list[str], use: Use) -> str | None:
    if use.nargs < 0 or not signatures:
        return None
    parsed = [parse_signature(s) for s in signatures]
    if any(s.fits(use.nargs, use.keywords) for s in parsed):
        return None
    given = f"{use.nargs} positional argument(s)" + (
        f" and keyword(s) {', '.join(use.keywords)}" if use.keywords else "")
    return f"no overload takes {given}; overloads: {' | '.join(signatures)}"


def analyze_files(paths, root: Path, api: dict) -> set[Use]:
    analyzer = Analyzer(api)
    for path in paths:
        analyzer.add_source(str(Path(path).relative_to(root)), Path(path).read_text())
    return analyzer.run()


def analyze_source(name: str, text: str, api: dict) -> set[Use]:
    analyzer = Analyzer(api)
    analyzer.add_source(name, text)
    return analyzer.run()

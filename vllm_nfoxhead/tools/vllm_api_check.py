"""Check the plugin against the real API of every supported vLLM release, without installing vLLM.

    python -m vllm_nfoxhead.tools.vllm_api_check [--release 0.33] [--wheel-dir DIR] [--src CHECKOUT]

For each wheel that integration/supported.py names (downloaded once with
`pip download --no-deps` into .cache/vllm-wheels/), the checker reads vLLM's
Python sources out of the wheel as ASTs (no import, no GPU, no CUDA torch) and
checks every use of vLLM it finds in the plugin's own code (vllm_nfoxhead/,
conversion/, tests/, examples/):

- imports (`import vllm.x`, `from vllm.x import name`, also inside functions):
  the module exists and defines, re-exports or lazily exports `name` (or has it
  as a submodule); vLLM module names given as strings (import_module,
  importorskip, a named tuple/list of vLLM module names).
- attribute chains and calls on imported vLLM names (`ops.cpu_attn_reshape_and_cache(...)`,
  `ParallelLMHead(...)`, `current_platform.is_cpu()`): every attribute exists, and a
  call's positional count and keywords fit the target's signature (`__init__` or
  dataclass fields for a class, through base classes inside the wheel).
- `_wrap(Owner, "name", make)` (integration/patches.py): `name` is defined on Owner
  itself (the patch reads `Owner.__dict__`), no subclass the plugin relies on
  overrides it, the wrapper defined in `make` takes the wrapped function's
  parameters, and its calls of the original fit the original's signature.
- attributes of vLLM runtime objects in integration/*.py (`runner.input_batch`,
  `sampling_metadata.top_k`, `self.group.broadcast_object(...)`): the names the
  code gives those objects are mapped to vLLM classes in integration/vllm_api.json,
  and every attribute read or written must exist on the class (class body,
  dataclass fields, properties, `self.x = ...` in any method, in-wheel bases; or
  set by the vLLM module the map names). `getattr(obj, "x", default)` and
  `hasattr` are optional reads: reported as info. Every parameter or local of the
  integration layer whose attributes are read (and that is unannotated or `Any`)
  must be classified in the map, so a new one cannot slip past.
- the calls vLLM makes into the plugin (listed under "hooks" in vllm_api.json,
  e.g. `drafter.propose(...)`): vLLM still makes them, with arguments the plugin's
  function accepts.

Exits 1 with one line per problem (`plugin file:line: what [releases]`), else 0
with one summary line per release checked. Info lines never fail the check.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import fnmatch
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from vllm_nfoxhead.integration.supported import API_CHECK_WHEELS

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_WHEEL_DIR = REPO_ROOT / ".cache" / "vllm-wheels"
SCAN_DIRS = ("vllm_nfoxhead", "conversion", "tests", "examples")
API_MAP = Path("vllm_nfoxhead") / "integration" / "vllm_api.json"
_SKIP_DIRS = {"__pycache__", ".venv", ".git", "build", "dist", ".cache"}
_VLLM_DOTTED = re.compile(r"vllm(\.[A-Za-z_]\w*)+")
_ANY_ANNOTATIONS = {"Any", "typing.Any", "Any | None", "Optional[Any]", "object"}
# Bases that add no attributes the plugin could read.
_TRIVIAL_BASES = {"object", "ABC", "ABCMeta", "Generic", "Protocol", "abc.ABC", "typing.Generic", "typing.Protocol"}
_ENUM_BASES = {"Enum", "IntEnum", "StrEnum", "Flag", "IntFlag", "enum.Enum", "enum.IntEnum", "enum.StrEnum"}
_DATACLASS_DECORATORS = {"dataclass", "config"}  # vllm.config.utils.config makes a pydantic dataclass


class CheckError(Exception):
    """The check could not run (no wheel, bad map): not a finding about the plugin."""


# --------------------------------------------------------------------------- vLLM side


@dataclass(eq=False)
class Binding:
    kind: str  # "class" | "function" | "value" | "from" | "module"
    node: Any = None  # ClassDef / FunctionDef / value expression
    ref: tuple[str, ...] = ()  # "from": (module, name); "module": (module,)
    annotation: Any = None


@dataclass(eq=False)
class Module:
    name: str
    is_package: bool
    bindings: dict[str, Binding] = field(default_factory=dict)
    typing_bindings: dict[str, Binding] = field(default_factory=dict)  # under `if TYPE_CHECKING:`
    stars: list[str] = field(default_factory=list)
    all: list[str] | None = None
    getattr_names: set[str] | None = None  # string constants in a module-level __getattr__
    lazy: dict[str, str] = field(default_factory=dict)  # name -> "module:attr" (vllm/__init__'s MODULE_ATTRS)


@dataclass(eq=False)
class Target:
    """What a dotted name refers to in one vLLM tree."""

    kind: str  # "module" | "class" | "function" | "value" | "instance" | "external"
    name: str  # dotted, e.g. vllm.v1.worker.gpu_model_runner.GPUModelRunner
    module: str = ""  # where the node is defined
    node: Any = None  # ClassDef (class, instance) / FunctionDef (function) / annotation (value)
    bound: str = "plain"  # function: "plain" | "static" | "class" | "instance" (first parameter filled?)

    @property
    def short(self) -> str:
        return self.name.rsplit(".", 1)[-1] if self.kind in ("class", "instance") else self.name


class _Unknown:
    """A member that may exist but cannot be seen from the sources (external base, __getattr__)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _final_name(expr: ast.expr) -> str:
    if isinstance(expr, ast.Call):
        expr = expr.func
    if isinstance(expr, ast.Attribute):
        return expr.attr
    if isinstance(expr, ast.Name):
        return expr.id
    return ""


def _decorators(node: ast.AST) -> set[str]:
    return {_final_name(d) for d in getattr(node, "decorator_list", [])}


class VllmTree:
    """The `vllm` package of one wheel (or of a directory holding `vllm/`), parsed on demand."""

    def __init__(self, label: str, names: Iterable[str], read: Callable[[str], bytes]) -> None:
        self.label = label
        self._read = read
        self.files: dict[str, str] = {}  # module -> member path of its .py
        self.packages: set[str] = set()  # every directory under vllm/ (namespace packages included)
        self.compiled: set[str] = set()  # extension modules: exist, cannot be read
        for member in names:
            parts = member.split("/")
            if parts[0] != "vllm":
                continue
            for i in range(1, len(parts)):
                self.packages.add(".".join(parts[:i]))
            if member.endswith(".py"):
                mod = member[:-3].replace("/", ".")
                self.files[mod[: -len(".__init__")] if mod.endswith(".__init__") else mod] = member
            elif member.endswith((".so", ".pyd")):
                self.compiled.add(".".join(parts[:-1] + [parts[-1].split(".")[0]]))
        self._modules: dict[str, Module | None] = {}
        self._class_cache: dict[int, tuple[dict[str, Target], set[str], set[str]]] = {}
        self._sources: dict[str, str] = {}

    @classmethod
    def open(cls, path: Path, label: str | None = None) -> "VllmTree":
        """A .whl file, or a directory that contains `vllm/`."""
        path = Path(path)
        if path.is_dir():
            root = path
            names = [p.relative_to(root).as_posix() for p in (root / "vllm").rglob("*") if p.is_file()]
            return cls(label or path.name, names, lambda m: (root / m).read_bytes())
        zf = zipfile.ZipFile(path)
        return cls(label or wheel_label(path), zf.namelist(), zf.read)

    # modules
    def module_exists(self, name: str) -> bool:
        return name in self.files or name in self.packages or name in self.compiled

    def source(self, name: str) -> str | None:
        member = self.files.get(name)
        if member is None:
            return None
        if name not in self._sources:
            self._sources[name] = self._read(member).decode("utf-8", "replace")
        return self._sources[name]

    def module(self, name: str) -> Module | None:
        if name in self._modules:
            return self._modules[name]
        mod: Module | None = None
        if name in self.files or name in self.packages:
            mod = Module(name, is_package=name in self.packages)
            text = self.source(name)
            if text is not None:
                try:
                    tree = ast.parse(text)
                except SyntaxError:
                    tree = ast.Module(body=[], type_ignores=[])
                self._collect(mod, tree.body, typing_only=False)
        self._modules[name] = mod
        return mod

    def _absolute(self, mod: Module, module: str | None, level: int) -> str:
        if not level:
            return module or ""
        base = mod.name.split(".")
        if not mod.is_package:
            base = base[:-1]
        base = base[: len(base) - (level - 1)] if level > 1 else base
        return ".".join(base + ([module] if module else []))

    def _collect(self, mod: Module, body: list[ast.stmt], typing_only: bool) -> None:
        out = mod.typing_bindings if typing_only else mod.bindings
        for st in body:
            if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out[st.name] = Binding("function", st)
                if st.name == "__getattr__" and not typing_only:
                    mod.getattr_names = {n.value for n in ast.walk(st)
                                         if isinstance(n, ast.Constant) and isinstance(n.value, str)}
            elif isinstance(st, ast.ClassDef):
                out[st.name] = Binding("class", st)
            elif isinstance(st, ast.Import):
                for alias in st.names:
                    if alias.asname:
                        out[alias.asname] = Binding("module", ref=(alias.name,))
                    else:
                        top = alias.name.split(".")[0]
                        out[top] = Binding("module", ref=(top,))
            elif isinstance(st, ast.ImportFrom):
                source = self._absolute(mod, st.module, st.level)
                for alias in st.names:
                    if alias.name == "*":
                        if not typing_only:
                            mod.stars.append(source)
                    else:
                        out[alias.asname or alias.name] = Binding("from", ref=(source, alias.name))
            elif isinstance(st, ast.Assign):
                for target in st.targets:
                    for name in _target_names(target):
                        out[name] = Binding("value", st.value)
                    if isinstance(target, ast.Name) and target.id == "__all__":
                        mod.all = _str_list(st.value)
                if isinstance(st.value, ast.Dict) and not typing_only:
                    for k, v in zip(st.value.keys, st.value.values):
                        if isinstance(k, ast.Constant) and isinstance(k.value, str):
                            text = v.value if isinstance(v, ast.Constant) and isinstance(v.value, str) else ""
                            mod.lazy.setdefault(k.value, text)
            elif isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name):
                if st.value is not None:
                    out[st.target.id] = Binding("value", st.value, annotation=st.annotation)
                else:  # a declaration only: a type for a lazily made name, not a definition
                    mod.typing_bindings[st.target.id] = Binding("value", annotation=st.annotation)
            elif isinstance(st, ast.If):
                if _is_type_checking(st.test):
                    self._collect(mod, st.body, typing_only=True)
                    self._collect(mod, st.orelse, typing_only)
                else:
                    self._collect(mod, st.body, typing_only)
                    self._collect(mod, st.orelse, typing_only)
            elif isinstance(st, ast.Try) or type(st).__name__ == "TryStar":
                self._collect(mod, st.body, typing_only)
                for handler in st.handlers:
                    self._collect(mod, handler.body, typing_only)
                self._collect(mod, st.orelse, typing_only)
                self._collect(mod, st.finalbody, typing_only)
            elif isinstance(st, (ast.With, ast.For, ast.While)):
                self._collect(mod, st.body, typing_only)

    # names
    def resolve_dotted(self, dotted: str) -> Target | _Unknown | None:
        """`vllm.a.b.Name.attr` -> its target: the longest module prefix, then members."""
        parts = dotted.split(".")
        for i in range(len(parts), 0, -1):
            mod = ".".join(parts[:i])
            if self.module_exists(mod):
                target: Target | _Unknown | None = Target("module", mod)
                for attr in parts[i:]:
                    if not isinstance(target, Target):
                        return target
                    target = self.member(target, attr)
                return target
        return None

    def module_member(self, modname: str, name: str, seen: set | None = None) -> Target | _Unknown | None:
        seen = set() if seen is None else seen
        if (modname, name) in seen:
            return None
        seen.add((modname, name))
        if not modname.startswith("vllm") or (modname != "vllm" and not modname.startswith("vllm.")):
            return Target("external", f"{modname}.{name}")
        if modname in self.compiled:
            return _Unknown(f"{modname} is a compiled module")
        mod = self.module(modname)
        if mod is None:
            return None
        binding = mod.bindings.get(name)
        if binding is not None:
            found = self._binding_target(mod, name, binding, seen)
            if found is not None:
                return found
        if self.module_exists(f"{modname}.{name}"):
            return Target("module", f"{modname}.{name}")
        for star in mod.stars:
            star_mod = self.module(star)
            if star_mod is not None and (star_mod.all is None or name in star_mod.all) and not name.startswith("_"):
                found = self.module_member(star, name, seen)
                if found is not None:
                    return found
        if mod.getattr_names is not None and (name in mod.lazy or name in mod.getattr_names):
            spec = mod.lazy.get(name, "")
            if ":" in spec:
                target_mod, attr = spec.split(":", 1)
                if target_mod.startswith("."):
                    target_mod = self._absolute(mod, target_mod.lstrip("."), len(target_mod) - len(target_mod.lstrip(".")))
                return self.module_member(target_mod, attr, seen)
            typed = mod.typing_bindings.get(name)
            if typed is not None:
                found = self._binding_target(mod, name, typed, seen)
                if found is not None:
                    return found
            return Target("value", f"{modname}.{name}", modname)
        return None

    def _binding_target(self, mod: Module, name: str, b: Binding, seen: set) -> Target | _Unknown | None:
        full = f"{mod.name}.{name}"
        if b.kind == "class":
            return Target("class", full, mod.name, b.node)
        if b.kind == "function":
            return Target("function", full, mod.name, b.node)
        if b.kind == "module":
            target = b.ref[0]
            if target == "vllm" or target.startswith("vllm."):
                return Target("module", target) if self.module_exists(target) else None
            return Target("external", target)
        if b.kind == "from":
            source, attr = b.ref
            if source == "vllm" or source.startswith("vllm."):
                return self.module_member(source, attr, seen)
            return Target("external", f"{source}.{attr}")
        # a value: an instance when its annotation names a class of this tree
        if b.annotation is not None:
            typ = self.resolve_expr(mod.name, b.annotation)
            if isinstance(typ, Target) and typ.kind == "class":
                return Target("instance", typ.name, typ.module, typ.node)
        return Target("value", full, mod.name, b.annotation)

    def resolve_expr(self, modname: str, expr: ast.expr) -> Target | _Unknown | None:
        """A base class or annotation expression, in the namespace of `modname`."""
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):  # "ForwardRef"
            try:
                expr = ast.parse(expr.value, mode="eval").body
            except SyntaxError:
                return None
        if isinstance(expr, ast.Subscript):
            return self.resolve_expr(modname, expr.value)
        if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.BitOr):  # X | None
            for side in (expr.left, expr.right):
                if not (isinstance(side, ast.Constant) and side.value is None):
                    return self.resolve_expr(modname, side)
        if isinstance(expr, ast.Name):
            found = self.module_member(modname, expr.id)
            if found is None:
                mod = self.module(modname)
                typed = mod.typing_bindings.get(expr.id) if mod else None
                if typed is not None:
                    found = self._binding_target(mod, expr.id, typed, set())
            if found is None and hasattr(builtins, expr.id):
                return Target("external", f"builtins.{expr.id}")
            return found
        if isinstance(expr, ast.Attribute):
            base = self.resolve_expr(modname, expr.value)
            return self.member(base, expr.attr) if isinstance(base, Target) else base
        return None

    # classes
    def _class_info(self, cls: Target) -> tuple[dict[str, Target], set[str], set[str]]:
        """(members of the class body, instance attributes set in its methods, dataclass flag set)."""
        key = id(cls.node)
        if key in self._class_cache:
            return self._class_cache[key]
        body: dict[str, Target] = {}
        inst: set[str] = set()

        def add(stmts: list[ast.stmt]) -> None:
            for st in stmts:
                if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    decos = _decorators(st)
                    bound = ("static" if "staticmethod" in decos else "class" if "classmethod" in decos
                             else "instance")
                    if decos & {"property", "cached_property"} or any(
                            _final_name(d) in ("setter", "getter", "deleter") for d in st.decorator_list):
                        body[st.name] = Target("value", f"{cls.name}.{st.name}", cls.module, st.returns)
                    else:
                        body[st.name] = Target("function", f"{cls.name}.{st.name}", cls.module, st, bound)
                    inst.update(_self_attributes(st))
                elif isinstance(st, ast.ClassDef):
                    body[st.name] = Target("class", f"{cls.name}.{st.name}", cls.module, st)
                elif isinstance(st, ast.Assign):
                    for target in st.targets:
                        for name in _target_names(target):
                            body[name] = Target("value", f"{cls.name}.{name}", cls.module)
                        if isinstance(target, ast.Name) and target.id == "__slots__":
                            inst.update(_str_list(st.value) or [])
                elif isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name):
                    body[st.target.id] = Target("value", f"{cls.name}.{st.target.id}", cls.module, st.annotation)
                elif isinstance(st, ast.If):
                    add(st.body)
                    add(st.orelse)
                elif isinstance(st, ast.Try):
                    add(st.body)
                    for handler in st.handlers:
                        add(handler.body)
                    add(st.orelse)
                    add(st.finalbody)

        add(cls.node.body)
        # Dataclasses, and msgspec structs (SamplingParams): constructed from their annotated fields.
        struct = any(ast.unparse(b).endswith(("msgspec.Struct", "Struct")) for b in cls.node.bases)
        flags = {"dataclass"} if _decorators(cls.node) & _DATACLASS_DECORATORS or struct else set()
        self._class_cache[key] = (body, inst, flags)
        return self._class_cache[key]

    def mro(self, cls: Target) -> tuple[list[Target], list[str], bool]:
        """(in-tree classes, depth first; bases outside the tree that may add members; is an enum)."""
        out: list[Target] = []
        unknown: list[str] = []
        enum = False
        seen: set[int] = set()

        def visit(c: Target) -> None:
            nonlocal enum
            if id(c.node) in seen:
                return
            seen.add(id(c.node))
            out.append(c)
            for base in c.node.bases:
                text = ast.unparse(base.value if isinstance(base, ast.Subscript) else base)
                found = self.resolve_expr(c.module, base)
                if isinstance(found, Target) and found.kind == "class":
                    visit(found)
                elif text in _ENUM_BASES or (isinstance(found, Target) and found.name in {"enum.Enum", "enum.IntEnum", "enum.StrEnum"}):
                    enum = True
                elif text not in _TRIVIAL_BASES and not (isinstance(found, Target) and found.name.rsplit(".", 1)[-1] in _TRIVIAL_BASES):
                    unknown.append(found.name if isinstance(found, Target) else text)

        visit(cls)
        return out, unknown, enum

    def defines_own(self, cls: Target, name: str) -> bool:
        return name in self._class_info(cls)[0]

    def class_member(self, cls: Target, name: str, instance: bool) -> Target | _Unknown | None:
        classes, unknown, enum = self.mro(cls)
        for c in classes:
            body, inst, _ = self._class_info(c)
            if name in body:
                member = body[name]
                if member.kind == "function" and not instance and member.bound == "instance":
                    return Target("function", member.name, member.module, member.node, "plain")
                if member.kind == "function" and member.bound == "class":
                    return Target("function", member.name, member.module, member.node, "class")
                if member.kind == "value" and member.node is not None:
                    typ = self.resolve_expr(member.module, member.node)
                    if isinstance(typ, Target) and typ.kind == "class":
                        return Target("instance", typ.name, typ.module, typ.node)
                return member
            if name in inst:
                return Target("value", f"{c.name}.{name}", c.module)
        if enum and name in ("name", "value"):
            return Target("value", f"{cls.name}.{name}", cls.module)
        for c in classes:
            if "__getattr__" in self._class_info(c)[0] or "__getattribute__" in self._class_info(c)[0]:
                return _Unknown(f"{c.short} defines __getattr__")
        if unknown:
            return _Unknown(f"{cls.short} derives from {', '.join(unknown)}")
        return None

    def member(self, target: Target, name: str) -> Target | _Unknown | None:
        if target.kind == "module":
            return self.module_member(target.name, name)
        if target.kind == "class":
            return self.class_member(target, name, instance=False)
        if target.kind == "instance":
            return self.class_member(target, name, instance=True)
        return _Unknown(f"{target.name} cannot be read from the sources")

    # signatures
    def signature(self, target: Target) -> "Sig | None":
        """How `target(...)` binds arguments; None when the sources cannot tell."""
        if target.kind == "function":
            sig = Sig.of(target.node)
            return sig.drop_first() if target.bound in ("instance", "class") else sig
        if target.kind != "class":
            return None
        classes, unknown, _ = self.mro(target)
        for c in classes:
            body, _, flags = self._class_info(c)
            if "__init__" in body and body["__init__"].kind == "function":
                return Sig.of(body["__init__"].node).drop_first()
            if "dataclass" in flags:
                return self._dataclass_sig(classes)
        return None if unknown else Sig()

    def _dataclass_sig(self, classes: list[Target]) -> "Sig":
        fields_: dict[str, tuple[bool, bool]] = {}  # name -> (has default, keyword-only)
        for c in reversed(classes):
            body, _, flags = self._class_info(c)
            if "dataclass" not in flags:
                continue
            kw_only = any(isinstance(d, ast.Call) and any(k.arg == "kw_only" and getattr(k.value, "value", False)
                                                          for k in d.keywords) for d in c.node.decorator_list)
            for st in c.node.body:
                if not (isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name)):
                    continue
                ann = ast.unparse(st.annotation)
                if "ClassVar" in ann:
                    continue
                if ann.endswith("KW_ONLY"):
                    kw_only = True
                    continue
                default = st.value is not None
                if isinstance(st.value, ast.Call) and _final_name(st.value.func) in ("field", "Field"):
                    kws = {k.arg: k.value for k in st.value.keywords}
                    if isinstance(kws.get("init"), ast.Constant) and kws["init"].value is False:
                        continue
                    default = bool({"default", "default_factory"} & set(kws)) or bool(st.value.args)
                    if isinstance(kws.get("kw_only"), ast.Constant):
                        fields_[st.target.id] = (default, bool(kws["kw_only"].value))
                        continue
                fields_[st.target.id] = (default, kw_only)
        return Sig(positional=[(n, d) for n, (d, k) in fields_.items() if not k],
                   kwonly=[(n, d) for n, (d, k) in fields_.items() if k])

    def sets_attribute(self, modname: str, attr: str) -> bool:
        """Whether module `modname` assigns `<something>.attr` (or registers it as a buffer/parameter)."""
        text = self.source(modname)
        if text is None or attr not in text:
            return False
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Attribute) and node.attr == attr and isinstance(node.ctx, ast.Store):
                return True
            if (isinstance(node, ast.Call) and _final_name(node.func) in ("register_buffer", "register_parameter", "setattr")
                    and any(isinstance(a, ast.Constant) and a.value == attr for a in node.args[:2])):
                return True
        return False

    def hints(self, name: str, kind: str) -> list[str]:
        """Where a missing module or top-level name lives now (cheap text search of the tree)."""
        if kind == "module":
            return sorted(m for m in self.files if m.endswith("." + name))[:3]
        pattern = re.compile(rf"^(?:def|class)\s+{re.escape(name)}\b|^{re.escape(name)}\s*[:=]", re.M)
        found = []
        for mod in sorted(self.files):
            text = self.source(mod)
            if text and name in text and pattern.search(text):
                found.append(mod)
                if len(found) == 3:
                    break
        return found


def _target_names(target: ast.expr) -> Iterator[str]:
    if isinstance(target, ast.Name):
        yield target.id
    elif isinstance(target, (ast.Tuple, ast.List)):
        for elt in target.elts:
            yield from _target_names(elt)
    elif isinstance(target, ast.Starred):
        yield from _target_names(target.value)


def _str_list(node: ast.expr) -> list[str] | None:
    if isinstance(node, (ast.List, ast.Tuple)):
        return [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return None


def _self_attributes(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    """Attributes a method sets on its first parameter (`self.x = ...`, `self.x: T = ...`, setattr)."""
    params = fn.args.posonlyargs + fn.args.args
    if not params:
        return set()
    me = params[0].arg
    found = set()
    for node in ast.walk(fn):
        if (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name) and node.value.id == me):
            found.add(node.attr)
        elif (isinstance(node, ast.Call) and _final_name(node.func) in ("setattr", "register_buffer", "register_parameter")
              and node.args):
            args = node.args if _final_name(node.func) != "setattr" else node.args[1:]
            first = node.args[0] if _final_name(node.func) == "setattr" else node.func
            owner_ok = (isinstance(first, ast.Name) and first.id == me) or (
                isinstance(first, ast.Attribute) and isinstance(first.value, ast.Name) and first.value.id == me)
            if owner_ok and args and isinstance(args[0], ast.Constant) and isinstance(args[0].value, str):
                found.add(args[0].value)
    return found


@dataclass
class Sig:
    positional: list[tuple[str, bool]] = field(default_factory=list)  # (name, has default)
    posonly: int = 0
    vararg: bool = False
    kwonly: list[tuple[str, bool]] = field(default_factory=list)
    kwarg: bool = False

    @classmethod
    def of(cls, fn: ast.FunctionDef | ast.AsyncFunctionDef) -> "Sig":
        a = fn.args
        names = [p.arg for p in a.posonlyargs + a.args]
        first_default = len(names) - len(a.defaults)
        return cls(
            positional=[(n, i >= first_default) for i, n in enumerate(names)],
            posonly=len(a.posonlyargs),
            vararg=a.vararg is not None,
            kwonly=[(p.arg, d is not None) for p, d in zip(a.kwonlyargs, a.kw_defaults)],
            kwarg=a.kwarg is not None,
        )

    def drop_first(self) -> "Sig":
        return Sig(self.positional[1:], max(self.posonly - 1, 0), self.vararg, self.kwonly, self.kwarg)

    def names(self) -> list[str]:
        return [n for n, _ in self.positional]

    def describe(self) -> str:
        parts = [n + ("=…" if d else "") for n, d in self.positional]
        if self.vararg:
            parts.append("*args")
        elif self.kwonly:
            parts.append("*")
        parts += [n + ("=…" if d else "") for n, d in self.kwonly]
        if self.kwarg:
            parts.append("**kwargs")
        if len(parts) > 10:  # e.g. unified_attention's 35 parameters: enough to recognise it
            parts = parts[:8] + [f"… {len(parts)} parameters"]
        return "(" + ", ".join(parts) + ")"

    def check_call(self, shape: "CallShape") -> list[str]:
        """What is wrong with calling this signature with `shape`; [] if it fits."""
        problems = []
        names = self.names()
        if not self.vararg and shape.nargs > len(names):
            problems.append(f"takes at most {len(names)} positional arguments, gets {shape.nargs}")
        kwonly = {n for n, _ in self.kwonly}
        for kw in shape.keywords:
            if kw in names[self.posonly:] or kw in kwonly:
                if kw in names[: shape.nargs]:
                    problems.append(f"gets '{kw}' both by position and by keyword")
            elif not self.kwarg:
                problems.append(f"has no parameter '{kw}'")
        if not shape.star and not shape.dstar:
            missing = [n for i, (n, d) in enumerate(self.positional) if i >= shape.nargs and not d and n not in shape.keywords]
            missing += [n for n, d in self.kwonly if not d and n not in shape.keywords]
            if missing:
                problems.append(f"needs {', '.join(repr(m) for m in missing)}, not passed")
        return problems


@dataclass(frozen=True)
class CallShape:
    nargs: int  # positional arguments, starred ones excluded
    keywords: tuple[str, ...]
    star: bool = False  # *args in the call
    dstar: bool = False  # **kwargs in the call

    @classmethod
    def of(cls, call: ast.Call) -> "CallShape":
        return cls(
            nargs=sum(not isinstance(a, ast.Starred) for a in call.args),
            keywords=tuple(k.arg for k in call.keywords if k.arg is not None),
            star=any(isinstance(a, ast.Starred) for a in call.args),
            dstar=any(k.arg is None for k in call.keywords),
        )


# --------------------------------------------------------------------------- plugin side

VRef = tuple  # ("module", "vllm.x") or ("from", "vllm.x", "name")


@dataclass(frozen=True)
class ImportUse:
    path: str
    line: int
    module: str
    name: str | None  # None: `import module` / `from module import *`
    optional: bool  # inside try/except ImportError


@dataclass(frozen=True)
class ChainUse:
    path: str
    line: int
    root: VRef
    attrs: tuple[str, ...]
    text: str
    call: CallShape | None = None
    optional: bool = False


@dataclass(frozen=True)
class StringUse:
    path: str
    line: int
    dotted: str
    optional: bool


@dataclass(frozen=True)
class MappedUse:
    path: str
    line: int
    expr: str  # the mapped expression, e.g. "runner" or "self.group"
    spec: Any  # class path (or list of alternatives) from the map
    attr: str
    call: CallShape | None = None
    optional: bool = False
    store: bool = False


@dataclass
class WrapUse:
    path: str
    line: int
    owner: ChainUse | None
    owner_text: str
    name: str | None
    static: bool
    wrapper: ast.FunctionDef | None
    orig_calls: list[tuple[int, CallShape]]


@dataclass
class Scan:
    imports: list[ImportUse] = field(default_factory=list)
    chains: list[ChainUse] = field(default_factory=list)
    strings: list[StringUse] = field(default_factory=list)
    mapped: list[MappedUse] = field(default_factory=list)
    wraps: list[WrapUse] = field(default_factory=list)
    problems: list["Finding"] = field(default_factory=list)  # release-independent (map, syntax)


@dataclass(frozen=True)
class Finding:
    where: str  # "path:line"
    message: str
    info: bool = False

    def sort_key(self) -> tuple:
        path, _, line = self.where.rpartition(":")
        return (self.info, path, int(line) if line.isdigit() else 0, self.message)


class ApiMap:
    """integration/vllm_api.json: what the integration layer calls its vLLM runtime objects."""

    def __init__(self, data: dict[str, Any], source: str = "vllm_api.json") -> None:
        self.source = source
        self.files: list[str] = list(data.get("files", []))
        self.names: dict[str, Any] = dict(data.get("names", {}))
        self.scopes: dict[str, dict[str, Any]] = dict(data.get("scopes", {}))
        self.set_elsewhere: dict[str, dict[str, str]] = dict(data.get("set_elsewhere", {}))
        self.subclasses: dict[str, list[str]] = dict(data.get("subclasses", {}))
        self.hooks: list[dict[str, Any]] = list(data.get("hooks", []))

    @classmethod
    def load(cls, path: Path) -> "ApiMap":
        try:
            return cls(json.loads(Path(path).read_text()), str(path))
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckError(f"cannot read the API map {path}: {exc}") from None

    def covers(self, rel: str) -> bool:
        return any(fnmatch.fnmatch(rel, pattern) for pattern in self.files)

    def names_for(self, rel: str, qualname: str) -> dict[str, Any]:
        names = dict(self.names)
        scoped = []
        for key, overrides in self.scopes.items():
            path, _, prefix = key.partition("::")
            if path != rel:
                continue
            if not prefix or qualname == prefix or qualname.startswith(prefix + "."):
                scoped.append((len(prefix), overrides))
        for _, overrides in sorted(scoped, key=lambda s: s[0]):
            names.update(overrides)
        return names


def _is_vllm(module: str | None) -> bool:
    return bool(module) and (module == "vllm" or module.startswith("vllm."))


def _walk_local(nodes: Iterable[ast.AST]) -> Iterator[ast.AST]:
    """Nodes of a function body (or module), not descending into nested functions, classes, lambdas."""
    stack = list(nodes)
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            stack.extend(ast.iter_child_nodes(node))


def _scope_imports(body: list[ast.stmt]) -> dict[str, VRef | None]:
    """Names bound by imports in one scope: vLLM references, or None for other imports."""
    out: dict[str, VRef | None] = {}
    for node in _walk_local(body):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    out[alias.asname] = ("module", alias.name) if _is_vllm(alias.name) else None
                else:
                    top = alias.name.split(".")[0]
                    out[top] = ("module", top) if _is_vllm(top) else None
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name != "*":
                    ok = node.level == 0 and _is_vllm(node.module)
                    out[alias.asname or alias.name] = ("from", node.module, alias.name) if ok else None
    return out


def _catches_import_error(node: ast.Try) -> bool:
    for handler in node.handlers:
        if handler.type is None:
            return True
        types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        if any(_final_name(t) in ("ImportError", "ModuleNotFoundError", "Exception", "BaseException") for t in types):
            return True
    return False


class _Scanner(ast.NodeVisitor):
    def __init__(self, rel: str, tree: ast.Module, api_map: ApiMap | None, scan: Scan) -> None:
        self.rel = rel
        self.map = api_map if api_map is not None and api_map.covers(rel) else None
        self.scan = scan
        self.scopes: list[dict[str, VRef | None]] = [_scope_imports(tree.body)]
        self.qual: list[str] = []
        self.kinds: list[str] = []  # "class" / "function" per qual entry
        self.bodies: list[list[ast.stmt]] = [tree.body]
        self.optional = 0
        self._names_cache: dict[str, dict[str, Any]] = {}

    # helpers
    def names(self) -> dict[str, Any]:
        qual = ".".join(self.qual)
        if qual not in self._names_cache:
            self._names_cache[qual] = self.map.names_for(self.rel, qual) if self.map else {}
        return self._names_cache[qual]

    def lookup(self, name: str) -> VRef | None:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        return None

    def chain(self, expr: ast.expr) -> tuple[VRef, tuple[str, ...]] | None:
        attrs = []
        while isinstance(expr, ast.Attribute):
            attrs.append(expr.attr)
            expr = expr.value
        if not isinstance(expr, ast.Name):
            return None
        ref = self.lookup(expr.id)
        return (ref, tuple(reversed(attrs))) if ref is not None else None

    def mapped(self, expr: ast.expr) -> tuple[str, Any] | None:
        if self.map is None:
            return None
        text = ast.unparse(expr)
        spec = self.names().get(text)
        return (text, spec) if spec is not None else None

    # scopes
    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for d in node.decorator_list:
            self.visit(d)
        self.visit(node.args)
        if node.returns is not None:
            self.visit(node.returns)
        in_class = bool(self.kinds) and self.kinds[-1] == "class"
        self.qual.append(node.name)
        self.kinds.append("function")
        self.scopes.append(_scope_imports(node.body))
        self.bodies.append(node.body)
        if self.map is not None:
            self.classify(node, in_class and "staticmethod" not in _decorators(node))
        for st in node.body:
            self.visit(st)
        self.bodies.pop()
        self.scopes.pop()
        self.kinds.pop()
        self.qual.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for d in node.decorator_list + node.bases + [k.value for k in node.keywords]:
            self.visit(d)
        self.qual.append(node.name)
        self.kinds.append("class")
        for st in node.body:
            self.visit(st)
        self.kinds.pop()
        self.qual.pop()

    def visit_Try(self, node: ast.Try) -> None:
        optional = _catches_import_error(node)
        self.optional += optional
        for st in node.body:
            self.visit(st)
        self.optional -= optional
        for part in node.handlers + node.orelse + node.finalbody:
            self.visit(part)

    # imports
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if _is_vllm(alias.name):
                self.scan.imports.append(ImportUse(self.rel, node.lineno, alias.name, None, self.optional > 0))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and _is_vllm(node.module):
            for alias in node.names:
                name = None if alias.name == "*" else alias.name
                self.scan.imports.append(ImportUse(self.rel, node.lineno, node.module, name, self.optional > 0))

    # uses
    def visit_Attribute(self, node: ast.Attribute) -> None:
        found = self.chain(node)
        if found is not None:
            self.scan.chains.append(ChainUse(self.rel, node.lineno, found[0], found[1], ast.unparse(node)))
            return
        mapped = self.mapped(node.value)
        if mapped is not None:
            self.scan.mapped.append(MappedUse(self.rel, node.lineno, mapped[0], mapped[1], node.attr,
                                              store=isinstance(node.ctx, (ast.Store, ast.Del))))
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func, args = node.func, node.args
        name = _final_name(func)
        literal = (len(args) >= 2 and isinstance(args[1], ast.Constant) and isinstance(args[1].value, str))
        if isinstance(func, ast.Name) and func.id in ("getattr", "hasattr") and literal:
            optional = func.id == "hasattr" or len(args) >= 3
            found = self.chain(args[0])
            if found is not None:
                self.scan.chains.append(ChainUse(self.rel, node.lineno, found[0], found[1] + (args[1].value,),
                                                 ast.unparse(node), optional=optional))
            mapped = self.mapped(args[0])
            if mapped is not None:
                self.scan.mapped.append(MappedUse(self.rel, node.lineno, mapped[0], mapped[1], args[1].value,
                                                  optional=optional))
        elif name == "setattr" and isinstance(func, ast.Attribute) and literal:  # monkeypatch.setattr(obj, "x", v)
            found = self.chain(args[0])
            if found is not None:
                raising = next((k.value for k in node.keywords if k.arg == "raising"), None)
                self.scan.chains.append(ChainUse(
                    self.rel, node.lineno, found[0], found[1] + (args[1].value,), ast.unparse(node),
                    optional=isinstance(raising, ast.Constant) and raising.value is False))
        elif name in ("import_module", "importorskip", "__import__") and args and isinstance(args[0], ast.Constant) \
                and isinstance(args[0].value, str) and _is_vllm(args[0].value):
            self.scan.strings.append(StringUse(self.rel, node.lineno, args[0].value, name == "importorskip"))
        elif isinstance(func, ast.Name) and func.id == "_wrap":
            self.wrap(node)
        found = self.chain(func)
        if found is not None:
            self.scan.chains.append(ChainUse(self.rel, node.lineno, found[0], found[1], ast.unparse(func),
                                             call=CallShape.of(node)))
        elif self.mapped(func) is not None:  # calling a mapped object: its __call__ (forward for a torch module)
            text, spec = self.mapped(func)
            self.scan.mapped.append(MappedUse(self.rel, node.lineno, text, spec, "__call__", call=CallShape.of(node)))
            if isinstance(func, ast.Attribute):
                self.visit(func.value)
        else:
            mapped = self.mapped(func.value) if isinstance(func, ast.Attribute) else None
            if mapped is not None:
                self.scan.mapped.append(MappedUse(self.rel, node.lineno, mapped[0], mapped[1], func.attr,
                                                  call=CallShape.of(node)))
                self.visit(func.value)
            else:
                self.visit(func)
        for a in args:
            self.visit(a)
        for k in node.keywords:
            self.visit(k.value)

    def visit_Assign(self, node: ast.Assign) -> None:
        """A named list of vLLM module names (`_KERNEL_MODULES = ("vllm.v1....", ...)`): each must exist."""
        value = node.value
        if isinstance(value, (ast.Tuple, ast.List, ast.Set)) and value.elts and all(
                isinstance(e, ast.Constant) and isinstance(e.value, str) and _VLLM_DOTTED.fullmatch(e.value)
                for e in value.elts):
            for e in value.elts:
                self.scan.strings.append(StringUse(self.rel, e.lineno, e.value, False))
        self.generic_visit(node)

    def wrap(self, node: ast.Call) -> None:
        """_wrap(Owner, "name", make[, static]): the wrapper that `make` returns, and its calls of the original."""
        args = node.args
        owner_found = self.chain(args[0]) if args else None
        owner = ChainUse(self.rel, node.lineno, owner_found[0], owner_found[1], ast.unparse(args[0])) \
            if owner_found else None
        name = args[1].value if len(args) > 1 and isinstance(args[1], ast.Constant) else None
        static_node = args[3] if len(args) > 3 else next((k.value for k in node.keywords if k.arg == "static"), None)
        static = bool(static_node.value) if isinstance(static_node, ast.Constant) else False
        make_name = args[2].id if len(args) > 2 and isinstance(args[2], ast.Name) else None
        wrapper, orig_calls = None, []
        make = next((n for n in _walk_local(self.bodies[-1])
                     if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == make_name), None)
        if make is not None and make.args.args:
            orig = make.args.args[0].arg
            returned = {n.value.id for n in _walk_local(make.body)
                        if isinstance(n, ast.Return) and isinstance(n.value, ast.Name)}
            wrapper = next((n for n in _walk_local(make.body)
                            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name in returned), None)
            if wrapper is not None:
                orig_calls = [(n.lineno, CallShape.of(n)) for n in ast.walk(wrapper)
                              if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == orig]
        self.scan.wraps.append(WrapUse(self.rel, node.lineno, owner, ast.unparse(args[0]) if args else "?",
                                       name, static, wrapper, orig_calls))

    # completeness of the map
    def classify(self, fn: ast.FunctionDef | ast.AsyncFunctionDef, method: bool) -> None:
        """Parameters and locals of this function that hold vLLM objects must be in the map."""
        names = self.names()
        a = fn.args
        params = a.posonlyargs + a.args + a.kwonlyargs
        if method and params[:1] == (a.posonlyargs + a.args)[:1]:
            params = params[1:]
        read: dict[str, int] = {}  # name -> line of its first attribute read
        for node in ast.walk(fn):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                read.setdefault(node.value.id, node.lineno)
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
                  and node.args and isinstance(node.args[0], ast.Name)):
                read.setdefault(node.args[0].id, node.lineno)
        qual = ".".join(self.qual)
        for p in params:
            ann = ast.unparse(p.annotation) if p.annotation is not None else None
            if p.arg in read and p.arg not in names and (ann is None or ann in _ANY_ANNOTATIONS):
                self.scan.problems.append(Finding(
                    f"{self.rel}:{p.lineno}",
                    f"parameter '{p.arg}' of {qual}() is {'unannotated' if ann is None else ann} and its attributes "
                    f"are read, but {Path(self.map.source).name} does not classify it: map it to its vLLM class "
                    "(or to null if it is no vLLM object)"))
        for node in _walk_local(fn.body):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                local, value = node.targets[0].id, node.value
            elif isinstance(node, (ast.For, ast.AsyncFor)) and isinstance(node.target, ast.Name):
                local, value = node.target.id, node.iter
            else:
                continue
            if not isinstance(value, ast.Attribute) or local not in read or local in names:
                continue
            base = ast.unparse(value.value)
            if names.get(base) is not None or base in names and names[base] is not None:
                self.scan.problems.append(Finding(
                    f"{self.rel}:{node.lineno}",
                    f"local '{local}' of {qual}() holds {ast.unparse(value)} (from a vLLM object) and its attributes "
                    f"are read, but {Path(self.map.source).name} does not classify it: map it to its vLLM class "
                    "(or to null if it is no vLLM object)"))


def plugin_files(root: Path, dirs: Iterable[str] = SCAN_DIRS) -> list[Path]:
    files = []
    for d in dirs:
        base = root / d
        if base.is_file() and base.suffix == ".py":
            files.append(base)
            continue
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(n for n in dirnames if n not in _SKIP_DIRS)
            files += [Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py")]
    return files


def scan_plugin(root: Path, api_map: ApiMap | None, dirs: Iterable[str] = SCAN_DIRS) -> Scan:
    """Every use of vLLM in the plugin's sources under `root`."""
    scan = Scan()
    for path in plugin_files(root, dirs):
        rel = path.relative_to(root).as_posix()
        try:
            tree = ast.parse(path.read_text(), filename=rel)
        except SyntaxError as exc:
            scan.problems.append(Finding(f"{rel}:{exc.lineno or 0}", f"cannot parse: {exc.msg}"))
            continue
        _Scanner(rel, tree, api_map, scan).visit(tree)
    return scan


# --------------------------------------------------------------------------- checks


@dataclass
class Counts:
    imports: int = 0
    calls: int = 0
    attributes: int = 0
    wraps: int = 0
    mapped: int = 0
    hooks: int = 0
    info: int = 0
    problems: int = 0

    def describe(self) -> str:
        return (f"{self.imports} imports, {self.attributes} attribute chains, {self.calls} calls, {self.wraps} wrapped "
                f"functions, {self.mapped} runtime-object attributes, {self.hooks} calls into the plugin checked")


def _display(t: Target) -> str:
    return f"module {t.name}" if t.kind == "module" else t.name


class Checker:
    """The checks of one scanned plugin against one vLLM tree."""

    def __init__(self, tree: VllmTree, scan: Scan, api_map: ApiMap | None, plugin_root: Path) -> None:
        self.tree, self.scan, self.map, self.root = tree, scan, api_map, plugin_root
        self.findings: list[Finding] = []
        self.counts = Counts()

    def add(self, path: str, line: int, message: str, info: bool = False) -> None:
        self.findings.append(Finding(f"{path}:{line}", message, info))
        if info:
            self.counts.info += 1
        else:
            self.counts.problems += 1

    def run(self) -> tuple[list[Finding], Counts]:
        for use in self.scan.imports:
            self.check_import(use)
        for use in self.scan.strings:
            self.check_string(use)
        for use in self.scan.chains:
            self.check_chain(use)
        for use in self.scan.wraps:
            self.check_wrap(use)
        for use in self.scan.mapped:
            self.check_mapped(use)
        if self.map is not None:
            for hook in self.map.hooks:
                self.check_hook(hook)
        return self.findings, self.counts

    def check_import(self, use: ImportUse) -> None:
        self.counts.imports += 1
        stmt = f"import {use.module}" if use.name is None else f"from {use.module} import {use.name}"
        if not self.tree.module_exists(use.module):
            hints = self.tree.hints(use.module.rsplit(".", 1)[-1], "module")
            hint = f" (a module of that name: {', '.join(hints)})" if hints else ""
            self.add(use.path, use.line, f"{stmt}: no module {use.module}{hint}", use.optional)
            return
        if use.name is not None and self.tree.module_member(use.module, use.name) is None:
            hints = [m for m in self.tree.hints(use.name, "name") if m != use.module]
            hint = f" (defined in {', '.join(hints)})" if hints else ""
            self.add(use.path, use.line, f"{stmt}: {use.module} has no {use.name}{hint}", use.optional)

    def check_string(self, use: StringUse) -> None:
        self.counts.imports += 1
        if self.tree.resolve_dotted(use.dotted) is None:
            self.add(use.path, use.line, f"'{use.dotted}': no such vLLM module or name", use.optional)

    def root_target(self, ref: VRef) -> Target | _Unknown | None:
        if ref[0] == "module":
            return Target("module", ref[1]) if self.tree.module_exists(ref[1]) else None
        return self.tree.module_member(ref[1], ref[2])

    def walk_chain(self, start: Target, attrs: Iterable[str], text: str, path: str, line: int,
                   optional: bool) -> Target | _Unknown | None:
        target: Target | _Unknown | None = start
        for attr in attrs:
            if not isinstance(target, Target):
                return target
            nxt = self.tree.member(target, attr)
            if nxt is None:
                what = "optional read " if optional else ""
                self.add(path, line, f"{what}{text}: {_display(target)} has no attribute '{attr}'", optional)
                return None
            target = nxt
        return target

    def check_chain(self, use: ChainUse) -> None:
        start = self.root_target(use.root)
        if not isinstance(start, Target):
            return  # the import itself is reported
        self.counts.attributes += bool(use.attrs)
        target = self.walk_chain(start, use.attrs, use.text, use.path, use.line, use.optional)
        if use.call is not None and isinstance(target, Target):
            self.counts.calls += 1
            self.check_signature(target, use.call, f"{use.text}(...)", use.path, use.line)

    def check_signature(self, target: Target, shape: CallShape, text: str, path: str, line: int) -> None:
        sig = self.tree.signature(target)
        if sig is None:
            return
        for problem in sig.check_call(shape):
            self.add(path, line, f"{text}: {_display(target)}{sig.describe()} {problem}")

    def check_wrap(self, use: WrapUse) -> None:
        self.counts.wraps += 1
        where = (use.path, use.line)
        if use.owner is None or use.name is None:
            self.add(*where, f"_wrap({use.owner_text}, ...): cannot tell which vLLM function is wrapped "
                             "(pass an imported vLLM class or module and a string literal)")
            return
        owner = self.root_target(use.owner.root)
        if isinstance(owner, Target):
            owner = self.walk_chain(owner, use.owner.attrs, use.owner.text, use.path, use.line, False)
        if not isinstance(owner, Target):
            return  # reported as an import or attribute problem
        text = f"_wrap({use.owner_text}, \"{use.name}\")"
        if owner.kind == "class":
            if not self.tree.defines_own(owner, use.name):
                inherited = self.tree.class_member(owner, use.name, instance=False)
                how = (f"inherited, not defined on {owner.short} itself (patches read {owner.short}.__dict__)"
                       if isinstance(inherited, Target) else "no such attribute")
                self.add(*where, f"{text}: {owner.name}.{use.name}: {how}")
                return
            original = self.tree._class_info(owner)[0][use.name]
            for sub_name in self.map.subclasses.get(owner.name, []) if self.map else []:
                self.check_subclass(owner, sub_name, use, text)
        elif owner.kind == "module":
            mod = self.tree.module(owner.name)
            binding = mod.bindings.get(use.name) if mod else None
            if binding is None:
                self.add(*where, f"{text}: module {owner.name} has no {use.name}")
                return
            original = self.tree._binding_target(mod, use.name, binding, set())
        else:
            self.add(*where, f"{text}: {owner.name} is not a class or module of vLLM")
            return
        if not isinstance(original, Target) or original.kind != "function":
            self.add(*where, f"{text}: {owner.name}.{use.name} is not a function here")
            return
        is_static = "staticmethod" in _decorators(original.node)
        if owner.kind == "class" and is_static != use.static:
            self.add(*where, f"{text}: {owner.name}.{use.name} is {'' if is_static else 'not '}a staticmethod "
                             f"but _wrap is called with static={use.static}")
        target_sig = Sig.of(original.node)
        if use.wrapper is not None:
            self.compare_wrapper(Sig.of(use.wrapper), target_sig, f"{owner.name}.{use.name}", text,
                                 use.path, use.wrapper.lineno)
        for line, shape in use.orig_calls:
            for problem in target_sig.check_call(shape):
                self.add(use.path, line, f"{text}: the wrapper's call of the original "
                                         f"{owner.name}.{use.name}{target_sig.describe()} {problem}")

    def compare_wrapper(self, wrapper: Sig, target: Sig, what: str, text: str, path: str, line: int) -> None:
        wn, tn = wrapper.names(), target.names()
        for i, (w, t) in enumerate(zip(wn, tn)):
            if w != t:
                self.add(path, line, f"{text}: wrapper parameter {i + 1} is '{w}' but {what}{target.describe()} "
                                     f"has '{t}' there")
                return
        if len(wn) > len(tn) and not target.vararg:
            extra = [n for n, d in wrapper.positional[len(tn):] if not d]
            if extra:
                self.add(path, line, f"{text}: the wrapper requires {', '.join(extra)}, which "
                                     f"{what}{target.describe()} does not take")
        if len(tn) > len(wn) and not wrapper.vararg:
            missing = tn[len(wn):]
            if missing:
                self.add(path, line, f"{text}: {what}{target.describe()} takes {', '.join(missing)}, which the "
                                     "wrapper does not accept (vLLM's callers would fail)")
        for (w, wd), (t, td) in zip(wrapper.positional, target.positional):
            if td and not wd:
                self.add(path, line, f"{text}: {what} makes '{t}' optional but the wrapper requires it")
        wkw = {n for n, _ in wrapper.kwonly} | set(wn)
        missing_kw = [n for n, _ in target.kwonly if n not in wkw]
        if missing_kw and not wrapper.kwarg:
            self.add(path, line, f"{text}: {what}{target.describe()} takes keyword {', '.join(missing_kw)}, "
                                 "which the wrapper does not accept")

    def check_subclass(self, owner: Target, sub_name: str, use: WrapUse, text: str) -> None:
        sub = self.tree.resolve_dotted(sub_name)
        if not isinstance(sub, Target) or sub.kind != "class":
            self.add(use.path, use.line, f"{text}: {sub_name} (a subclass the plugin relies on, "
                                         f"{Path(self.map.source).name}) is not a class here")
            return
        classes, _, _ = self.tree.mro(sub)
        names = [c.name for c in classes]
        if owner.name not in names:
            self.add(use.path, use.line, f"{text}: {sub.short} no longer derives from {owner.short}")
            return
        for c in classes[: names.index(owner.name)]:
            if self.tree.defines_own(c, use.name):
                self.add(use.path, use.line, f"{text}: {c.name} overrides {use.name}, so the wrapper on "
                                             f"{owner.short} does not run there")

    def map_class(self, spec: Any) -> Target | None:
        for candidate in [spec] if isinstance(spec, str) else list(spec):
            found = self.tree.resolve_dotted(candidate)
            if isinstance(found, Target) and found.kind == "class":
                return found
        return None

    def check_mapped(self, use: MappedUse) -> None:
        self.counts.mapped += 1
        cls = self.map_class(use.spec)
        source = Path(self.map.source).name if self.map else "the map"
        if cls is None:
            self.add(use.path, use.line, f"{use.expr}.{use.attr}: {source} maps '{use.expr}' to {use.spec}, "
                                         "which is not a class here")
            return
        found = self.tree.class_member(cls, use.attr, instance=True)
        if use.attr == "__call__" and not isinstance(found, Target):
            called = self.tree.class_member(cls, "forward", instance=True)  # torch.nn.Module.__call__ runs forward
            found = called if isinstance(called, Target) else found
        text = f"{use.expr}.{use.attr}" if not use.optional else f"optional read of {use.expr}.{use.attr}"
        if use.attr == "__call__":
            text = f"{use.expr}(...)"
        if not isinstance(found, Target):
            elsewhere = self.elsewhere(cls, use.attr)
            if elsewhere is not None and elsewhere.startswith("external:"):
                base = elsewhere[len("external:"):]
                if base not in self.tree.mro(cls)[1]:
                    self.add(use.path, use.line, f"{text} ({use.expr}: {cls.name}): {source} says '{use.attr}' comes "
                                                 f"from its base {base}, which it no longer derives from", use.optional)
                return
            if elsewhere is not None:
                if not self.tree.sets_attribute(elsewhere, use.attr):
                    self.add(use.path, use.line, f"{text} ({use.expr}: {cls.name}): {source} says {elsewhere} sets "
                                                 f"'{use.attr}' on it, which it no longer does", use.optional)
                return
            reason = f" ({found.reason}; if vLLM sets it elsewhere, name that module under set_elsewhere in " \
                     f"{source})" if isinstance(found, _Unknown) else ""
            self.add(use.path, use.line, f"{text}: {cls.name} has no attribute '{use.attr}'{reason}", use.optional)
            return
        if use.call is not None:
            self.check_signature(found, use.call, f"{use.expr}.{use.attr}(...)", use.path, use.line)

    def elsewhere(self, cls: Target, attr: str) -> str | None:
        if self.map is None:
            return None
        for c in self.tree.mro(cls)[0]:
            module = self.map.set_elsewhere.get(c.name, {}).get(attr)
            if module is not None:
                return module
        return None

    def check_hook(self, hook: dict[str, Any]) -> None:
        """vLLM still calls the plugin function `hook["plugin"]` at `hook["called_from"]`, with arguments it takes."""
        self.counts.hooks += 1
        plugin = hook["plugin"]
        fn, where = plugin_function(self.root, plugin)
        if fn is None:
            self.add(where, 0, f"hook {plugin}: not found in the plugin")
            return
        path, line = where, fn.lineno
        sig = Sig.of(fn)
        if "." in plugin.split(":", 1)[1] and "staticmethod" not in _decorators(fn):
            sig = sig.drop_first()
        spellings = set(hook["call"])
        branch = hook.get("branch")
        calls: list[ast.Call] = []
        for site in hook["called_from"]:
            target = self.tree.resolve_dotted(site)
            if not isinstance(target, Target) or target.kind not in ("class", "function"):
                self.add(path, line, f"hook {plugin}: vLLM has no {site} (where it called the plugin)")
                continue
            calls += _calls_in(target.node, spellings, branch)
        if not calls:
            self.add(path, line, f"hook {plugin}: vLLM no longer calls it as {' / '.join(sorted(spellings))} in "
                                 f"{', '.join(hook['called_from'])}{f' (branch {branch})' if branch else ''}")
            return
        for call in calls:
            for problem in sig.check_call(CallShape.of(call)):
                text = " ".join(ast.unparse(call).split())
                text = text if len(text) <= 90 else text[:89] + "…"
                self.add(path, line, f"hook {plugin}{sig.describe()}: vLLM's call `{text}` {problem}")


def _calls_in(node: ast.AST, spellings: set[str], branch: str | None) -> list[ast.Call]:
    found = []

    def visit(n: ast.AST, in_branch: bool) -> None:
        if isinstance(n, ast.Call) and ast.unparse(n.func) in spellings and (branch is None or in_branch):
            found.append(n)
        if isinstance(n, ast.If) and branch is not None and branch in ast.unparse(n.test):
            for c in n.body:
                visit(c, True)
            for c in n.orelse:
                visit(c, in_branch)
            visit(n.test, in_branch)
            return
        for c in ast.iter_child_nodes(n):
            visit(c, in_branch)

    visit(node, False)
    return found


def plugin_function(root: Path, spec: str) -> tuple[ast.FunctionDef | None, str]:
    """"pkg.module:Class.method" in the plugin checkout -> (its FunctionDef, file path relative to root)."""
    module, _, qual = spec.partition(":")
    rel = module.replace(".", "/") + ".py"
    path = root / rel
    if not path.is_file():
        return None, rel
    nodes: list[ast.stmt] = ast.parse(path.read_text()).body
    found: Any = None
    for part in qual.split("."):
        found = next((n for n in nodes if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and n.name == part), None)
        if found is None:
            return None, rel
        nodes = found.body
    return (found if isinstance(found, (ast.FunctionDef, ast.AsyncFunctionDef)) else None), rel


# --------------------------------------------------------------------------- wheels


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def wheel_label(path: Path) -> str:
    parts = Path(path).name.split("-")
    return f"{parts[0].replace('_', '-')} {parts[1]}" if len(parts) > 2 else Path(path).stem


def parse_requirement(req: str) -> tuple[str, str]:
    name, sep, version = req.partition("==")
    if not sep or not name.strip() or not version.strip():
        raise CheckError(f"wheel requirement {req!r} must pin one version: NAME==VERSION")
    return name.strip(), version.strip()


def cached_wheel(wheel_dir: Path, req: str) -> Path | None:
    name, version = parse_requirement(req)
    prefix = f"{_norm(name)}-{version}-"
    for path in sorted(Path(wheel_dir).glob("*.whl")):
        if path.name.lower().startswith(prefix):
            return path
    return None


def fetch_wheel(wheel_dir: Path, req: str, offline: bool = False) -> Path:
    """The wheel of `req` from `wheel_dir`, downloaded (no dependencies) if missing."""
    found = cached_wheel(wheel_dir, req)
    if found is not None:
        return found
    if offline:
        raise CheckError(f"{req}: no wheel in {wheel_dir} and --offline given")
    Path(wheel_dir).mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "-d", str(wheel_dir), req]
    print(f"downloading {req} into {wheel_dir} ...", file=sys.stderr, flush=True)
    started = time.monotonic()
    tty = sys.stderr.isatty()
    proc = subprocess.run(cmd + ([] if tty else ["-q"]), stdout=sys.stderr if tty else subprocess.PIPE,
                          stderr=sys.stderr if tty else subprocess.PIPE, text=True)
    found = cached_wheel(wheel_dir, req)
    if proc.returncode != 0 or found is None:
        tail = "\n".join(((proc.stderr or "") + (proc.stdout or "")).strip().splitlines()[-5:])
        raise CheckError(f"pip download --no-deps {req} failed (exit {proc.returncode}): {tail}")
    print(f"downloaded {found.name} ({found.stat().st_size / 1e6:.0f} MB) in {time.monotonic() - started:.0f} s",
          file=sys.stderr, flush=True)
    return found


# --------------------------------------------------------------------------- driver


@dataclass
class ReleaseResult:
    series: str
    label: str
    findings: list[Finding]
    counts: Counts


def check_tree(tree: VllmTree, scan: Scan, api_map: ApiMap | None, plugin_root: Path) -> tuple[list[Finding], Counts]:
    return Checker(tree, scan, api_map, plugin_root).run()


def run_check(plugin_root: Path, trees: list[tuple[str, VllmTree]], api_map: ApiMap | None,
              dirs: Iterable[str] = SCAN_DIRS) -> tuple[list[ReleaseResult], list[Finding]]:
    """Scan the plugin once, check it against every (series, tree); also the release-independent findings."""
    scan = scan_plugin(plugin_root, api_map, dirs)
    results = []
    for series, tree in trees:
        findings, counts = check_tree(tree, scan, api_map, plugin_root)
        results.append(ReleaseResult(series, tree.label, findings, counts))
    return results, list(scan.problems)


def report(results: list[ReleaseResult], general: list[Finding], out: TextIO | None = None) -> int:
    """Print one line per problem (merged across releases), then one summary line per release; the exit code."""
    out = out or sys.stdout
    merged: dict[Finding, list[str]] = {}
    for r in results:
        for f in r.findings:
            merged.setdefault(f, [])
            if r.label not in merged[f]:
                merged[f].append(r.label)
    for f in general:
        merged.setdefault(f, ["vllm_api.json"])
    problems = 0
    for f in sorted(merged, key=Finding.sort_key):
        prefix = "info: " if f.info else ""
        problems += not f.info
        print(f"{f.where}: {prefix}{f.message} [{', '.join(merged[f])}]", file=out)
    for r in results:
        n = r.counts.problems
        state = "OK" if n == 0 else f"{n} problem{'s' if n != 1 else ''}"
        info = f"; {r.counts.info} info" if r.counts.info else ""
        print(f"{r.label} (series {r.series}): {state}: {r.counts.describe()}{info}", file=out)
    if general:
        print(f"vllm_api.json: {len(general)} problem{'s' if len(general) != 1 else ''}", file=out)
    return 1 if problems else 0


def build_parser() -> argparse.ArgumentParser:
    series = ", ".join(API_CHECK_WHEELS)
    p = argparse.ArgumentParser(
        prog="python -m vllm_nfoxhead.tools.vllm_api_check",
        description="Check every vLLM module, class, function, attribute and signature the plugin uses against "
                    f"the sources of each supported vLLM release ({series}), read from the wheels without "
                    "installing them (no GPU needed). Exit 1 with one line per problem.")
    p.add_argument("--release", action="append", metavar="SERIES", choices=list(API_CHECK_WHEELS),
                   help=f"check only this supported series (repeatable; default: all of {series}); the wheels "
                        "per series are listed in vllm_nfoxhead/integration/supported.py")
    p.add_argument("--wheel", action="append", metavar="WHEEL", default=[],
                   help="check this wheel instead of the supported ones: a .whl path, a directory holding vllm/, "
                        "or NAME==VERSION to download (e.g. vllm==0.34.0 to preview a release); repeatable")
    p.add_argument("--wheel-dir", type=Path, default=DEFAULT_WHEEL_DIR,
                   help="where wheels are cached and downloaded with `pip download --no-deps` "
                        "(default: .cache/vllm-wheels/ in this checkout)")
    p.add_argument("--offline", action="store_true",
                   help="never download: fail when a wheel is not in --wheel-dir")
    p.add_argument("--src", type=Path, default=REPO_ROOT, metavar="CHECKOUT",
                   help="the plugin checkout to check (a directory holding vllm_nfoxhead/, conversion/, tests/, "
                        "examples/); default: this one")
    p.add_argument("--api-map", type=Path, default=None, metavar="JSON",
                   help=f"the runtime-object map (default: {API_MAP} in --src, or this checkout's when --src has none)")
    p.add_argument("--quiet-info", action="store_true", help="do not print info lines (optional reads that are absent)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    root = args.src.resolve()
    try:
        if not (root / "vllm_nfoxhead").is_dir():
            raise CheckError(f"--src {root} holds no vllm_nfoxhead/")
        map_path = args.api_map or (root / API_MAP if (root / API_MAP).is_file() else REPO_ROOT / API_MAP)
        api_map = ApiMap.load(map_path)
        trees: list[tuple[str, VllmTree]] = []
        if args.wheel:
            for spec in args.wheel:
                path = Path(spec)
                if not path.exists():
                    path = fetch_wheel(args.wheel_dir, spec, args.offline)
                trees.append(("-", VllmTree.open(path)))
        else:
            for series in args.release or list(API_CHECK_WHEELS):
                for req in API_CHECK_WHEELS[series]:
                    trees.append((series, VllmTree.open(fetch_wheel(args.wheel_dir, req, args.offline))))
        results, general = run_check(root, trees, api_map)
    except CheckError as exc:
        print(f"vllm_api_check: {exc}", file=sys.stderr)
        return 2
    if args.quiet_info:
        for r in results:
            r.findings = [f for f in r.findings if not f.info]
    code = report(results, general)
    print(f"checked {root} against {len(results)} wheel(s) in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())

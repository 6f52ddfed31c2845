"""Deterministic generator of the project's prompt sets (train, bench and wide train).

No dataset hub is reachable and public benchmark questions (MT-Bench, Spec-Bench,
AlpacaEval) must stay out of the training data, so the prompts are written for this
project. What they say is data, in `prompt_pools/*.json` beside this module: one file
per task category (its topic pools and templates), `common.json` (the category order,
shared pools and templates, the forbidden benchmark phrases) and `wide.json` (train-only
pools that widen the main pools). `prompt_pools/README.md` describes the template
language. This module only reads those files, draws from them with a seeded RNG, checks
the result and writes it.

Train and bench are disjoint by construction, not only by text: each category draws its
subject from *main* pools (`main(POOL)` in a template: its topics, or its problem templates
for maths and reasoning), and a fixed fifth of every main pool (the items with the smallest
CRC32) is reserved for the bench. A bench prompt therefore never shares its topic with a
train prompt. Exact-text disjointness and the absence of known benchmark phrases are
checked again after generation.

CLI:  python -m vllm_nfoxhead.training.prompts --out data/prompts [--train 2400] [--bench 80] [--wide 0] [--seed 0]
"""

from __future__ import annotations

import argparse
import ast
import functools
import json
import operator
import random
import re
import string
import zlib
from collections import ChainMap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vllm_nfoxhead.core.errors import NFoxHeadError

POOL_DIR = Path(__file__).with_name("prompt_pools")
SPLITS = ("train", "bench")
BENCH_SHARE = 5  # one item in BENCH_SHARE of each main pool is bench-only
_FIX = "fix the template in vllm_nfoxhead/training/prompt_pools/"


@dataclass(frozen=True)
class Prompt:
    """One line of a prompt file."""

    id: str
    category: str
    prompt: str


# --------------------------------------------------------------------------
# The data: templates and pools read from prompt_pools/*.json
# --------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Template:
    """A template: `let` bindings drawn in order, then `say` filled (one text, or one drawn
    of several), or else one of `kinds` drawn by weight (a kind sees the bindings)."""

    name: str
    let: tuple[tuple[str, str], ...] = ()
    say: str | tuple[str, ...] = ""
    kinds: tuple[Template, ...] = ()
    weight: int = 1
    pools: Mapping[str, tuple] = field(default_factory=dict)
    attrs: Mapping[str, str] = field(default_factory=dict)
    replace: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Library:
    """Everything read from the pool directory."""

    categories: dict[str, Template]
    pools: dict[str, tuple]
    wide: dict[str, tuple]
    templates: dict[str, Template]
    forbidden: tuple[str, ...]


_TEMPLATE_KEYS = {"name", "about", "pools", "let", "say", "kinds", "weight", "attrs", "replace"}


def _item(value: object) -> object:
    """A pool item from JSON: lists become tuples (hashable, repr as before), objects templates."""
    if isinstance(value, list):
        return tuple(_item(v) for v in value)
    if isinstance(value, dict):
        return _template(value)
    return value


def _pool(value: list | dict) -> tuple:
    """A pool: a list of items, or an object of named groups of items (concatenated in order)."""
    if isinstance(value, dict):
        return tuple(x for group in value.values() for x in _pool(group))
    return tuple(_item(v) for v in value)


def _template(spec: dict, name: str = "") -> Template:
    unknown = set(spec) - _TEMPLATE_KEYS
    if unknown:
        raise NFoxHeadError(f"template {spec.get('name', name)!r} has unknown keys {sorted(unknown)}", _FIX)
    name = spec.get("name", name)
    say = spec.get("say", "")
    return Template(
        name=name,
        let=tuple(spec.get("let", {}).items()),
        say=tuple(say) if isinstance(say, list) else say,
        kinds=tuple(_template(k, f"{name}[{i}]") for i, k in enumerate(spec.get("kinds", ()))),
        weight=spec.get("weight", 1),
        pools={k: _pool(v) for k, v in spec.get("pools", {}).items()},
        attrs=dict(spec.get("attrs", {})),
        replace=tuple((old, new) for old, new in spec.get("replace", ())),
    )


def _read(path: Path) -> dict:
    """A JSON file's object."""
    return json.loads(path.read_text(encoding="utf-8"))


def _add_pools(pools: dict[str, tuple], new: dict, where: str) -> None:
    for name, value in new.items():
        if name in pools:
            raise NFoxHeadError(f"pool {name} is defined twice (again in {where})", "rename one")
        pools[name] = _pool(value)


def load_library(directory: Path = POOL_DIR) -> Library:
    """Read `common.json`, one `<category>.json` per category and `wide.json`."""
    common = _read(directory / "common.json")
    pools: dict[str, tuple] = {}
    _add_pools(pools, common["pools"], "common.json")
    categories = {}
    for name in common["categories"]:
        data = _read(directory / f"{name}.json")
        _add_pools(pools, data.get("pools", {}), f"{name}.json")
        categories[name] = _template(data["prompt"], name)
    templates = {name: _template(spec, name) for name, spec in common["templates"].items()}
    wide = {name: _pool(value) for name, value in _read(directory / "wide.json")["pools"].items()}
    if set(wide) - set(pools):
        raise NFoxHeadError(f"wide.json widens unknown pools {sorted(set(wide) - set(pools))}", "fix wide.json")
    return Library(categories, pools, wide, templates, tuple(common["forbidden_phrases"]))


LIBRARY = load_library()
CATEGORIES: dict[str, Template] = LIBRARY.categories
POOLS: dict[str, tuple] = LIBRARY.pools
WIDE_POOLS: dict[str, tuple] = LIBRARY.wide
# Distinctive phrases of public benchmark questions (MT-Bench, Spec-Bench,
# AlpacaEval). None of them may occur in a generated prompt.
FORBIDDEN_PHRASES: tuple[str, ...] = LIBRARY.forbidden


# --------------------------------------------------------------------------
# Drawing: the train/bench split of main pools
# --------------------------------------------------------------------------
def _key(item: object) -> str:
    return item.name if isinstance(item, Template) else repr(item)


def bench_share(pool: Sequence[object]) -> frozenset[str]:
    """Keys of the bench-only items of a main pool: the ceil(n/5) smallest CRC32s.

    A hash rank rather than list position, so that adding a topic to a list moves
    few items between the splits. The key is a template's name, else the item's repr.
    """
    keys = sorted((_key(x) for x in pool), key=lambda k: zlib.crc32(k.encode()))
    return frozenset(keys[: -(-len(keys) // BENCH_SHARE)])


class Picker:
    """Draws slot values for one split; every draw goes through `rng`."""

    def __init__(self, rng: random.Random, split: str, library: Library = LIBRARY) -> None:
        self.rng = rng
        self.bench = split == "bench"
        self.library = library
        self._shares: dict[str, list] = {}

    def main(self, name: str) -> object:
        """An item of this split's share of the main pool `name` (see `bench_share`)."""
        if name not in self._shares:
            self._shares[name] = self.share(name)
        return self.rng.choice(self._shares[name])

    def share(self, name: str) -> list:
        """This split's items of the main pool `name`, in pool order."""
        pool = self.library.pools[name]
        bench = bench_share(pool)
        return [x for x in pool if (_key(x) in bench) == self.bench]

    def any(self, pool: Sequence[object]) -> object:
        """One item of `pool`."""
        return self.rng.choice(pool)

    def some(self, pool: Sequence[object], k: int) -> list:
        """`k` distinct items of `pool`."""
        return self.rng.sample(list(pool), k)

    def num(self, lo: int, hi: int) -> int:
        """An integer in [lo, hi]."""
        return self.rng.randint(lo, hi)


class WidePicker(Picker):
    """A train picker whose main pools also hold the train-only items of `wide.json`.

    Used for the widened training set: same templates, many more subjects, never a
    bench-share item (those are excluded exactly as in the train split).
    """

    def __init__(self, rng: random.Random, library: Library = LIBRARY) -> None:
        super().__init__(rng, "train", library)

    def share(self, name: str) -> list:
        return super().share(name) + list(self.library.wide.get(name, ()))


# --------------------------------------------------------------------------
# Filling templates
# --------------------------------------------------------------------------
class Text(str):
    """A template string drawn by `pick(...)`: filled where it is inserted."""


class Filled(str):
    """A filled template; `attrs` are its template's constants (`{doc.fields}`)."""

    attrs: Mapping[str, str]

    def __new__(cls, text: str, attrs: Mapping[str, str]) -> Filled:
        self = super().__new__(cls, text)
        self.attrs = attrs
        return self


@dataclass(frozen=True)
class _Scope:
    picker: Picker
    pools: ChainMap
    names: dict[str, object]


def expand(template: Template, picker: Picker) -> Filled:
    """Draw one text from `template`, in a fresh scope (like a function call)."""
    return _run(template, _Scope(picker, ChainMap(picker.library.pools), {}))


def _run(template: Template, outer: _Scope) -> Filled:
    scope = _Scope(outer.picker, outer.pools.new_child(dict(template.pools)), outer.names)
    for target, expr in template.let:
        _bind(_parse(target), _eval(_parse(expr), scope), scope.names)
    if template.kinds:
        return _run(_draw_kind(template.kinds, scope.picker), scope)
    say = scope.picker.any(template.say) if isinstance(template.say, tuple) else template.say
    text = _fill(say, scope)
    for old, new in template.replace:
        text = text.replace(old, new)
    return Filled(text, template.attrs)


def _draw_kind(kinds: Sequence[Template], picker: Picker) -> Template:
    """One kind, drawn as num(0, total weight - 1) over the kinds' weight ranges."""
    r = picker.num(0, sum(k.weight for k in kinds) - 1)
    for kind in kinds:
        if r < kind.weight:
            return kind
        r -= kind.weight
    raise AssertionError("unreachable")


def _fill(text: str, scope: _Scope) -> str:
    """`text` with each `{expression[:format spec]}` replaced, left to right."""
    out = []
    for literal, expr, spec, conversion in _parse_text(text):
        out.append(literal)
        if expr is None:
            continue
        if conversion:
            raise NFoxHeadError(f"{{{expr}!{conversion}}}: no conversions in templates", _FIX)
        out.append(format(_resolve(_eval(_parse(expr), scope), scope), spec or ""))
    return "".join(out)


def _resolve(value: object, scope: _Scope) -> object:
    return _fill(value, scope) if isinstance(value, Text) else value


@functools.cache
def _parse_text(text: str) -> tuple:
    return tuple(string.Formatter().parse(text))


@functools.cache
def _parse(expr: str) -> ast.expr:
    try:
        return ast.parse(expr.strip(), mode="eval").body
    except SyntaxError as exc:
        raise NFoxHeadError(f"template expression {expr!r}: {exc.msg}", _FIX) from None


def _bind(target: ast.expr, value: object, names: dict[str, object]) -> None:
    """Assign `value` to a name, or unpack it into a (nested) tuple of names."""
    if isinstance(target, ast.Name):
        names[target.id] = value
    elif isinstance(target, ast.Tuple) and isinstance(value, Sequence) and len(value) == len(target.elts):
        for t, v in zip(target.elts, value):
            _bind(t, v, names)
    else:
        raise NFoxHeadError(f"cannot bind {ast.unparse(target)!r} to {value!r}", _FIX)


_BINOPS: dict[type, Callable[[object, object], object]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}


def _eval(node: ast.expr, scope: _Scope) -> object:
    """Evaluate the small expression language: names, numbers, strings, lists, arithmetic,
    `name.attr` and calls of FUNCTIONS. Sub-expressions run left to right, as in Python."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in scope.names:
            raise NFoxHeadError(f"unknown name {node.id!r} in a template", _FIX)
        return scope.names[node.id]
    if isinstance(node, (ast.List, ast.Tuple)):
        return tuple(_eval(e, scope) for e in node.elts)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return _BINOPS[type(node.op)](_eval(node.left, scope), _eval(node.right, scope))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_eval(node.operand, scope)
    if isinstance(node, ast.Attribute):
        return getattr(_eval(node.value, scope), "attrs", {})[node.attr]
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in FUNCTIONS and not node.keywords):
        return FUNCTIONS[node.func.id](scope, *node.args)
    raise NFoxHeadError(f"unsupported template expression {ast.unparse(node)!r}", _FIX)


def _pool_arg(node: ast.expr, scope: _Scope) -> Sequence[object]:
    """A pool argument: a pool name (local pools first) or a literal list."""
    if not isinstance(node, ast.Name):
        return _eval(node, scope)
    if node.id not in scope.pools:
        raise NFoxHeadError(f"unknown pool {node.id!r} in a template", _FIX)
    return scope.pools[node.id]


def _call(item: object, scope: _Scope) -> object:
    """A drawn template item is expanded at once (its draws happen now); others are values."""
    return expand(item, scope.picker) if isinstance(item, Template) else item


def _text(node: ast.expr, scope: _Scope) -> str:
    return str(_resolve(_eval(node, scope), scope))


def _main(scope: _Scope, pool: ast.expr) -> object:
    if not isinstance(pool, ast.Name) or pool.id not in scope.picker.library.pools:
        raise NFoxHeadError(f"main({ast.unparse(pool)}) needs a shared pool name", _FIX)
    return _call(scope.picker.main(pool.id), scope)


def _nums(scope: _Scope, count: ast.expr, lo: ast.expr, hi: ast.expr) -> tuple[int, ...]:
    n, a, b = (_eval(x, scope) for x in (count, lo, hi))
    return tuple(scope.picker.num(a, b) for _ in range(n))


def _capital(scope: _Scope, x: ast.expr) -> str:
    text = _text(x, scope)
    return text[:1].upper() + text[1:]


# What a template may call (see prompt_pools/README.md).
FUNCTIONS: dict[str, Callable[..., object]] = {
    "num": lambda s, lo, hi: s.picker.num(_eval(lo, s), _eval(hi, s)),
    "nums": _nums,
    "any": lambda s, pool: _call(s.picker.any(_pool_arg(pool, s)), s),
    "main": _main,
    "pick": lambda s, pool: Text(s.picker.any(_pool_arg(pool, s))),
    "some": lambda s, pool, k: tuple(s.picker.some(_pool_arg(pool, s), _eval(k, s))),
    "use": lambda s, name: expand(s.picker.library.templates[name.id], s.picker),
    "join": lambda s, items: ", ".join(map(str, _eval(items, s))),
    "strip": lambda s, x: _text(x, s).strip(),
    "capital": _capital,
}


# --------------------------------------------------------------------------
# Generation, checks, files
# --------------------------------------------------------------------------
def normalise(text: str) -> str:
    """Case- and whitespace-insensitive form used for distinctness checks."""
    return re.sub(r"\s+", " ", text.strip().lower())


def _category_prompts(category: str, split: str, count: int, seed: int,
                      exclude: frozenset[str] = frozenset(), library: Library = LIBRARY) -> list[str]:
    """`count` distinct prompts of one category, deterministic in (category, split, seed),
    none of them in `exclude` (normalised texts).

    split "wide" is a train split drawn with `WidePicker` (main pools plus wide pools).
    """
    rng = random.Random(f"{seed}-{category}-{split}")
    picker = WidePicker(rng, library) if split == "wide" else Picker(rng, split, library)
    seen: dict[str, str] = {}
    for _ in range(count * 200):
        if len(seen) == count:
            break
        text = str(expand(library.categories[category], picker))
        key = normalise(text)
        if key not in exclude:
            seen.setdefault(key, text)
    if len(seen) < count:
        raise NFoxHeadError(
            f"only {len(seen)} distinct {split} prompts for {category!r}, {count} asked",
            "ask for fewer prompts or add templates/topics",
        )
    return list(seen.values())


def generate_split(split: str, total: int, seed: int = 0, exclude: frozenset[str] = frozenset(),
                   library: Library = LIBRARY) -> list[Prompt]:
    """`total` prompts spread evenly over the categories, interleaved category by category,
    none of them in `exclude` (normalised texts)."""
    cats = list(library.categories)
    per_cat = [total // len(cats) + (i < total % len(cats)) for i in range(len(cats))]
    lists = {c: _category_prompts(c, split, n, seed, exclude, library) for c, n in zip(cats, per_cat)}
    out: list[Prompt] = []
    for i in range(max(per_cat)):
        for c in cats:
            if i < len(lists[c]):
                out.append(Prompt(f"{split}-{c}-{i:04d}", c, lists[c][i]))
    return out


def check_prompt_sets(train: Sequence[Prompt], bench: Sequence[Prompt]) -> None:
    """Raise NFoxHeadError unless ids and texts are unique, sets disjoint, no benchmark text."""
    for name, items in (("train", train), ("bench", bench)):
        if len({p.id for p in items}) != len(items):
            raise NFoxHeadError(f"duplicate ids in {name}", "fix the generator")
        if len({normalise(p.prompt) for p in items}) != len(items):
            raise NFoxHeadError(f"duplicate prompts in {name}", "fix the generator")
    overlap = {normalise(p.prompt) for p in train} & {normalise(p.prompt) for p in bench}
    if overlap:
        raise NFoxHeadError(
            f"{len(overlap)} prompt(s) in both train and bench, e.g. {sorted(overlap)[0][:60]!r}",
            "fix the train/bench split of the main pools",
        )
    for p in (*train, *bench):
        hit = next((f for f in FORBIDDEN_PHRASES if f in normalise(p.prompt)), None)
        if hit:
            raise NFoxHeadError(f"{p.id} contains benchmark text {hit!r}", "change the template")


def check_wide_set(wide: Sequence[Prompt], train: Sequence[Prompt], bench: Sequence[Prompt]) -> None:
    """Raise NFoxHeadError unless the wide set is unique, new, and disjoint from the bench."""
    check_prompt_sets(wide, bench)
    overlap = {normalise(p.prompt) for p in wide} & {normalise(p.prompt) for p in train}
    if overlap:
        raise NFoxHeadError(f"{len(overlap)} wide prompt(s) repeat train.jsonl, e.g. {sorted(overlap)[0][:60]!r}",
                            "use another --seed or fewer --wide prompts")


def write_jsonl(path: Path, prompts: Sequence[Prompt]) -> None:
    """One JSON object per line, UTF-8 (the format of data/prompts/*.jsonl)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for p in prompts:
            f.write(json.dumps(asdict(p), ensure_ascii=False) + "\n")


def build(out_dir: Path, train: int = 2400, bench: int = 80, seed: int = 0) -> tuple[list[Prompt], list[Prompt]]:
    """Generate, check and write `train.jsonl` and `bench.jsonl` into `out_dir`."""
    train_set, bench_set = generate_split("train", train, seed), generate_split("bench", bench, seed)
    check_prompt_sets(train_set, bench_set)
    write_jsonl(out_dir / "train.jsonl", train_set)
    write_jsonl(out_dir / "bench.jsonl", bench_set)
    return train_set, bench_set


def build_wide(out_dir: Path, wide: int, train: int = 2400, bench: int = 80, seed: int = 0) -> list[Prompt]:
    """Generate, check and write `train-wide.jsonl`: more train prompts over the wide pools."""
    train_set, bench_set = generate_split("train", train, seed), generate_split("bench", bench, seed)
    taken = frozenset(normalise(p.prompt) for p in (*train_set, *bench_set))
    wide_set = generate_split("wide", wide, seed, exclude=taken)
    check_wide_set(wide_set, train_set, bench_set)
    write_jsonl(out_dir / "train-wide.jsonl", wide_set)
    return wide_set


def main(argv: list[str] | None = None) -> int:
    """The CLI (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m vllm_nfoxhead.training.prompts",
        description="Write the generated train/bench prompt sets (deterministic).",
    )
    parser.add_argument("--out", default="data/prompts", help="output directory")
    parser.add_argument("--train", type=int, default=2400, help="number of train prompts")
    parser.add_argument("--bench", type=int, default=80, help="number of bench prompts")
    parser.add_argument("--wide", type=int, default=0,
                        help="also write train-wide.jsonl with this many train prompts that draw their "
                             "subjects from the train-only wide topic pools (0 = none)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (the shipped files use 0)")
    args = parser.parse_args(argv)
    try:
        train, bench = build(Path(args.out), args.train, args.bench, args.seed)
        wide = build_wide(Path(args.out), args.wide, args.train, args.bench, args.seed) if args.wide else []
    except NFoxHeadError as exc:
        parser.exit(2, f"error: {exc}\n")
    print(f"wrote {len(train)} train, {len(bench)} bench and {len(wide)} wide prompts to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

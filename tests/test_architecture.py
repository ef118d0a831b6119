"""The shape of the code, checked with ast: one-way imports, an I/O-free controller, the safety doc.

A module is one concern however long it is, so there is no size rule: what is checked is
where imports point. Deliberate exceptions go in the ALLOWED_* tables with the reason.
"""

from __future__ import annotations

import ast
import fnmatch
import functools
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("lampctl", "web", "firmware_bridge", "bench")  # the code under the import rules

# The one place lampctl may import web: the module that composes a Flask app and serves it.
ALLOWED_LAMPCTL_TO_WEB = {
    "lampctl.service.serving": "`lampctl serve` and `lampctl collect` build their web app (create_app, "
    "create_fleet_app) here; nothing else in lampctl may know that web exists.",
}
# The controller decides when a lamp is on; it gets hardware, clock and log handed in.
CORE = "lampctl.core.controller"
FORBIDDEN_IN_CORE = (
    dict.fromkeys(["flask", "werkzeug", "waitress"], "the web")
    | dict.fromkeys(["gpiozero", "lgpio", "RPi", "pigpio"], "GPIO")
    | {"serial": "the firmware link", "sqlite3": "the disk"}
)

# The rooms of the house and what each may import of ours (besides itself). A newcomer finds the
# core, the storage, the fleet and the tools by folder; these rules keep each folder one concern.
ROOMS = {
    "lampctl.core": set(),  # the state machine and the rules: pure, handed everything (config only for types)
    "lampctl.config": {"lampctl.core", "firmware_bridge"},  # the limits it checks are the core's and the firmware's
    "lampctl.platform": set(),  # the process and the machine: files, lock, signals, clock, HTTP server
    "lampctl.devices": {"lampctl.core", "lampctl.config", "lampctl.platform", "firmware_bridge"},
    "lampctl.storage": {"lampctl.core", "lampctl.config", "lampctl.platform"},
    "lampctl.fleet": {"lampctl.core", "lampctl.config", "lampctl.platform", "lampctl.storage"},
    "lampctl.tools": {
        "lampctl.core",
        "lampctl.config",
        "lampctl.platform",
        "lampctl.devices",
        "lampctl.storage",
        "firmware_bridge",
    },
    "lampctl.service": {
        "lampctl.core",
        "lampctl.config",
        "lampctl.platform",
        "lampctl.devices",
        "lampctl.storage",
        "lampctl.fleet",
        "web",
    },
    "lampctl.cli": {
        "lampctl.core",
        "lampctl.config",
        "lampctl.platform",
        "lampctl.devices",
        "lampctl.storage",
        "lampctl.fleet",
        "lampctl.tools",
        "lampctl.service",
        "firmware_bridge",
    },
    "lampctl.testing": {"lampctl.core", "lampctl.config", "lampctl.platform", "firmware_bridge"},
    "web": {"lampctl.core", "lampctl.config", "lampctl.platform", "lampctl.storage"},
    "firmware_bridge": set(),
    "bench": {"lampctl", "web", "firmware_bridge"},  # measures the whole product, through its own doors
}
# What may import lampctl.testing (real processes on loopback ports): the tests and the benchmarks.
TESTING_USERS = ("tests", "bench", "lampctl.testing")
MAX_IMPORT_DEPTH = 8  # modules in a package's longest chain of imports, the first importer included


# ---- the import graph ---------------------------------------------------------------------
@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # a module of ours ("lampctl.storage.store") or an outside top-level name ("sqlite3")
    line: int

    @property
    def where(self) -> str:
        return f"{module_path(self.importer)}:{self.line}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def module_path(name: str) -> str:
    return _modules()[name].relative_to(ROOT).as_posix()


@functools.cache
def _modules() -> dict[str, Path]:
    found = {}
    for package in (*PACKAGES, "tests"):
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def _resolve(dotted: str) -> str:
    """The longest prefix of `dotted` that is one of our modules, else its top-level name."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in _modules():
            return ".".join(parts[:n])
    return parts[0]


class _ImportVisitor(ast.NodeVisitor):
    """Every import a module runs: at module level and inside functions, not under TYPE_CHECKING."""

    def __init__(self, name: str, is_package: bool):
        self.name, self.found = name, []
        self.package = name if is_package else name.rpartition(".")[0]

    def visit_If(self, node: ast.If) -> None:
        if getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.found.append(Import(self.name, _resolve(alias.name), node.lineno))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            anchor = self.package.split(".")[: len(self.package.split(".")) - (node.level - 1)]
            base = ".".join([*anchor, *([base] if base else [])])
        for alias in node.names:
            # `from web import admin` imports the submodule web.admin when there is one.
            sub = f"{base}.{alias.name}"
            self.found.append(Import(self.name, sub if sub in _modules() else _resolve(base), node.lineno))


@functools.cache
def imports() -> tuple[Import, ...]:
    found = []
    for name, path in _modules().items():
        visitor = _ImportVisitor(name, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text(), str(path)))
        found += [imp for imp in visitor.found if imp.target != name]
    return tuple(found)


def graph(skip: frozenset = frozenset()) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {name: set() for name in _modules()}
    for imp in imports():
        if imp.target in _modules() and (imp.importer, imp.target) not in skip:
            edges[imp.importer].add(imp.target)
    return edges


def cycle_graph(skip: frozenset = frozenset()) -> dict[str, set[str]]:
    """The graph cycles are looked for in: without a submodule's imports of its own package.

    Python runs a package's __init__ before any of its submodules, so `from web import services`
    in web/panel.py adds no dependency that importing web.panel did not already have; and the
    package's factory importing its blueprints inside create_app is flaskr's own pattern.
    """
    edges = graph(skip)
    for importer, targets in edges.items():
        targets -= {t for t in targets if in_package(importer, t) and importer != t}
    return edges


def reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in edges[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Each group of modules that import each other (directly or round about), sorted."""
    reach = {name: reachable(edges, name) for name in edges}
    groups = {tuple(sorted(n for n in reach[name] if name in reach[n])) for name in edges if name in reach[name]}
    return sorted(list(g) for g in groups)


def in_package(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_architecture_import_walker_sees_function_level_and_relative_imports():
    found = {(imp.importer, imp.target) for imp in imports()}
    assert ("lampctl.service.serving", "web") in found  # inside serve_panel()
    assert ("lampctl.service", "lampctl.devices.hardware") in found  # inside serve(), after the config
    assert ("lampctl.core.controller", "lampctl.core.safety") in found  # module level
    assert ("lampctl.cli", "argparse") in found  # outside name, top level only
    assert ("web", "flask") in found


def test_architecture_cycle_finder_and_type_only_imports():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import sqlite3\nelse:\n    import json\n"
    visitor = _ImportVisitor("lampctl.core.x", False)
    visitor.visit(ast.parse(source + "from . import safety\nfrom ..storage.store import UsageLog\n"))
    assert [imp.target for imp in visitor.found] == ["typing", "json", "lampctl.core.safety", "lampctl.storage.store"]


def test_architecture_no_import_cycle():
    left = cycles(cycle_graph())
    assert left == [], f"modules that import each other: {left}; dependencies must point one way"


def crossing(importers: str, targets: str, *, exempt=()) -> list[str]:
    """Imports from package `importers` into package `targets`, except from the exempt modules."""
    return [
        f"{imp.where} imports {imp.target}"
        for imp in imports()
        if in_package(imp.importer, importers) and in_package(imp.target, targets) and imp.importer not in exempt
    ]


def test_architecture_lampctl_imports_web_only_where_allowed():
    wrong = crossing("lampctl", "web", exempt=ALLOWED_LAMPCTL_TO_WEB)
    assert wrong == [], "web depends on lampctl, never the other way: " + "; ".join(wrong)
    for allowed in ALLOWED_LAMPCTL_TO_WEB:
        assert crossing(allowed, "web"), f"{allowed} no longer imports web: update ALLOWED_LAMPCTL_TO_WEB"


def room_of(module: str) -> str | None:
    """The room (subpackage) a module of ours lives in: the longest ROOMS key it is in."""
    rooms = [room for room in ROOMS if in_package(module, room)]
    return max(rooms, key=len) if rooms else None


def test_architecture_every_module_lives_in_a_room():
    loose = [
        name
        for name in _modules()
        if not in_package(name, "tests") and name not in ("lampctl", "lampctl.__main__") and room_of(name) is None
    ]
    assert loose == [], f"modules outside every room of ROOMS (put each in the folder of its concern): {loose}"


def test_architecture_each_room_imports_only_the_rooms_below_it():
    wrong = []
    for imp in imports():
        here, there = room_of(imp.importer), room_of(imp.target)
        if here is None or there is None or here == there or in_package(there, here):
            continue
        allowed = ROOMS[here]
        if not any(in_package(there, room) or room == there for room in allowed) and not (
            here == "bench" and there.split(".")[0] in allowed
        ):
            wrong.append(f"{imp.where} ({here}) imports {imp.target} ({there})")
    assert wrong == [], "imports against the rooms' order (ROOMS in this file): " + "; ".join(sorted(set(wrong)))


def test_architecture_the_rooms_order_has_no_circle():
    edges = {room: {r for r in allowed if r in ROOMS} for room, allowed in ROOMS.items()}
    assert cycles(edges) == []
    assert room_of("lampctl.core.controller") == "lampctl.core" and room_of("web.panel") == "web"
    assert room_of("lampctl.cli") == "lampctl.cli" and room_of("lampctl.__main__") is None


def test_architecture_only_tests_and_bench_import_the_testing_kit():
    wrong = [
        f"{imp.where} imports {imp.target}"
        for imp in imports()
        if in_package(imp.target, "lampctl.testing")
        and not any(in_package(imp.importer, user) for user in TESTING_USERS)
    ]
    assert wrong == [], "lampctl.testing serves the tests and bench/ only, as trio.testing does: " + "; ".join(wrong)


def longest_chain(edges: dict[str, set[str]]) -> list[str]:
    """The longest path of imports (the graph has no circle), as the modules along it."""
    best: dict[str, list[str]] = {}

    def walk(name: str) -> list[str]:
        if name not in best:
            best[name] = [name, *max((walk(n) for n in edges[name]), key=len, default=[])]
        return best[name]

    return max((walk(name) for name in edges), key=len, default=[])


def test_architecture_import_chains_are_short():
    """Inside each package, no chain of imports (function-level ones included) is over 8 modules deep."""
    assert longest_chain({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == ["a", "b", "c"]
    edges = cycle_graph()
    for package in ("lampctl", "web", "firmware_bridge"):
        inside = {
            name: {t for t in targets if in_package(t, package)}
            for name, targets in edges.items()
            if in_package(name, package)
        }
        chain = longest_chain(inside)
        assert len(chain) <= MAX_IMPORT_DEPTH, (
            f"an import chain {len(chain)} modules deep in {package} (at most {MAX_IMPORT_DEPTH}): "
            + " -> ".join(chain)
        )


def test_architecture_firmware_bridge_imports_nothing_from_lampctl():
    wrong = crossing("firmware_bridge", "lampctl")
    assert wrong == [], "firmware_bridge stands alone (the simulator and the firmware use it): " + "; ".join(wrong)


def test_architecture_bench_imports_nothing_from_tests():
    assert crossing("bench", "tests") == []


def test_architecture_web_applies_no_safety_rule_of_its_own():
    """The panel offers what the lamp's view says fits (extend_ok, extend_left_s, same_patient_s): S3 and its
    budget are lampctl.core.safety's, applied by the controller, and web never re-derives them."""
    rules = {
        node.name
        for node in ast.parse((ROOT / "lampctl/core/safety.py").read_text()).body
        if isinstance(node, ast.FunctionDef)
    }
    assert {"s3_allows", "s3_left_s"} <= rules  # the walk below looks for what it should
    wrong = crossing("web", "lampctl.core.safety")
    for path in sorted((ROOT / "web").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            name = (
                getattr(node, "id", None)
                or getattr(node, "attr", None)
                or getattr(node, "asname", None)
                or (node.name if isinstance(node, ast.alias) else None)
            )
            if name in rules:
                wrong.append(f"{path.relative_to(ROOT)}:{node.lineno} uses {name}")
    assert wrong == [], "web shows the controller's decisions and applies no safety rule itself: " + "; ".join(wrong)


def test_architecture_controller_and_what_it_imports_do_no_io():
    edges = graph()
    core = {CORE, *reachable(edges, CORE)}
    # Importing lampctl.core.controller also runs each enclosing package's __init__.
    core |= {".".join(name.split(".")[:n]) for name in set(core) for n in range(1, name.count(".") + 1)}
    core |= {name for root in set(core) for name in reachable(edges, root)}
    wrong = [
        f"{imp.where} imports {imp.target} ({FORBIDDEN_IN_CORE[imp.target]})"
        for imp in imports()
        if imp.importer in core and imp.target in FORBIDDEN_IN_CORE
    ]
    assert wrong == [], f"{CORE} must be handed its I/O, not import it: " + "; ".join(wrong)
    assert "lampctl.core.safety" in core  # the walk really followed the controller's imports


# ---- functions, which the safety case names --------------------------------------------------
def _code_files() -> list[Path]:
    return [path for name, path in _modules().items() if not in_package(name, "tests")]


def _functions(tree: ast.AST, prefix: str = ""):
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            yield prefix + node.name, node.end_lineno - start + 1
            yield from _functions(node, prefix + node.name + ".<locals>.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, prefix + node.name + ".")
        else:
            yield from _functions(node, prefix)


@functools.cache
def function_lines() -> dict[str, int]:
    found = {}
    for path in _code_files():
        rel = path.relative_to(ROOT).as_posix()
        for name, lines in _functions(ast.parse(path.read_text(), str(path))):
            found[f"{rel}::{name}"] = max(lines, found.get(f"{rel}::{name}", 0))
    return found


def test_architecture_function_walker_measures_from_decorator_to_last_line():
    source = "class A:\n    @staticmethod\n    def f():\n        def g():\n            pass\n        return 1\n"
    tree = ast.parse(source)
    assert dict(_functions(tree)) == {"A.f": 5, "A.f.<locals>.g": 2}


def test_architecture_exceptions_are_explained():
    assert all(len(reason) > 20 for reason in ALLOWED_LAMPCTL_TO_WEB.values()), "say why in a sentence"


# ---- the safety case ----------------------------------------------------------------------
SAFETY_DOC = ROOT / "docs" / "SAFETY.md"
# DESIGN.md defines S1-S22 (it sits beside the repository, ../shared/DESIGN.md, when there
# is one); docs/SAFETY.md carries them into the repository.
DESIGN_INVARIANTS = 22
DESIGN_DOC = ROOT.parent / "shared" / "DESIGN.md"
TAG_RE = re.compile(r"def (test_((?:s\d+_)+)\w*)")
SECTION_RE = re.compile(r"^### (S\d+)\b", re.M)


def safety_sections() -> dict[str, str]:
    text = SAFETY_DOC.read_text()
    heads = list(SECTION_RE.finditer(text))
    stop = text.find("\n## ", heads[-1].end()) if heads else -1
    ends = [m.start() for m in heads[1:]] + [stop if stop >= 0 else len(text)]
    return {m.group(1): text[m.start() : end] for m, end in zip(heads, ends, strict=True)}


def test_architecture_every_invariant_tag_in_the_tests_is_in_safety_md():
    tags = {}
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for match in TAG_RE.finditer(path.read_text()):
            for tag in match.group(2).rstrip("_").split("_"):
                tags.setdefault(tag.upper(), f"tests/{path.name}::{match.group(1)}")
    assert {"S1", "S5", "S6"} <= set(tags)  # the scan finds the tags that exist today
    missing = {tag: where for tag, where in tags.items() if tag not in safety_sections()}
    assert missing == {}, f"invariant tags used by tests but not described in docs/SAFETY.md: {missing}"


def design_invariants() -> list[str]:
    if DESIGN_DOC.is_file():
        return re.findall(r"^- (S\d+) ", DESIGN_DOC.read_text(), re.M)
    return [f"S{n}" for n in range(1, DESIGN_INVARIANTS + 1)]


def test_architecture_safety_md_describes_every_invariant_in_full():
    sections = safety_sections()
    design = design_invariants()
    # The design's invariants first, in order; those the project added since (S23 on) follow, numbered on.
    assert list(sections)[: len(design)] == design, "one section per invariant of the design, in order"
    added = list(sections)[len(design) :]
    assert added == [f"S{n}" for n in range(len(design) + 1, len(design) + 1 + len(added))], "added ones number on"
    for tag, text in sections.items():
        for part in ("**Hazard**", "**Enforced in**", "**Proved by**"):
            assert part in text, f"docs/SAFETY.md {tag} lacks {part}"


def test_architecture_safety_md_points_at_code_and_tests_that_exist():
    text = SAFETY_DOC.read_text()
    tests = re.findall(r"`(tests/[\w/]+\.py)::(test_\w+)`", text)
    code_refs = re.findall(r"`((?:lampctl|web|firmware_bridge)/[\w/]+\.py:[\w.]+)`", text)
    assert len(tests) >= 18 and len(code_refs) >= 18  # the patterns below really match the page
    missing = [
        f"{path}::{name}"
        for path, name in tests
        if not (ROOT / path).exists() or not re.search(rf"def {name}\(", (ROOT / path).read_text())
    ]
    code = {name.replace("::", ":") for name in function_lines()}
    missing += [ref for ref in code_refs if ref not in code and not _names_a_class(ref)]
    assert missing == [], f"docs/SAFETY.md names code or tests that do not exist (update the line): {missing}"


def _names_a_class(ref: str) -> bool:
    path, name = ref.split(":")
    tree = ast.parse((ROOT / path).read_text())
    return any(isinstance(n, ast.ClassDef) and n.name == name for n in tree.body)


def tagged_tests() -> dict[str, list[str]]:
    """{"S7": ["tests/test_x.py::test_s7_...", ...]}: every test that carries an invariant tag."""
    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for match in TAG_RE.finditer(path.read_text()):
            for tag in match.group(2).rstrip("_").split("_"):
                found.setdefault(tag.upper(), []).append(f"tests/{path.name}::{match.group(1)}")
    return found


def test_architecture_safety_md_cites_every_tagged_test_under_each_of_its_tags():
    sections = safety_sections()
    missing = [
        f"{tag}: {test}"
        for tag, tests in tagged_tests().items()
        if tag in sections
        for test in tests
        if f"`{test}`" not in sections[tag]
    ]
    assert missing == [], f"tests that prove an invariant but are not cited in its section of docs/SAFETY.md: {missing}"


USER_DOCS = (ROOT / "README.md", SAFETY_DOC)
PATH_RE = re.compile(r"`((?:lampctl|web|firmware_bridge|bench|deploy|docs|tests|scripts)/[\w./-]*\w)`")
LINK_RE = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
MODULE_RE = re.compile(r"python -m ([\w.]+)")


def _runnable(module: str) -> bool:
    base = ROOT.joinpath(*module.split("."))
    return (base / "__main__.py").is_file() or base.with_suffix(".py").is_file()


def test_architecture_user_docs_name_files_links_and_modules_that_exist():
    wrong = []
    for doc in USER_DOCS:
        text = doc.read_text()
        name = doc.relative_to(ROOT).as_posix()
        wrong += [f"{name}: {p}" for p in PATH_RE.findall(text) if not (ROOT / p.split(":")[0]).exists()]
        wrong += [
            f"{name}: link {link}"
            for link in LINK_RE.findall(text)
            if "://" not in link and not (doc.parent / link).exists()
        ]
        wrong += [f"{name}: python -m {m}" for m in MODULE_RE.findall(text) if not _runnable(m)]
    assert wrong == [], f"the README or docs/SAFETY.md point at what does not exist in the repository: {wrong}"


def test_architecture_readme_leads_to_the_safety_case_in_the_repository():
    text = (ROOT / "README.md").read_text()
    assert "](docs/SAFETY.md)" in text, "the README links docs/SAFETY.md, where a newcomer finds every rule"
    assert "shared/DESIGN.md" not in text, "a clone has no ../shared/DESIGN.md: point at docs/SAFETY.md"


# ---- gaps: each one is a test that fails until it is closed ---------------------------------
GAP_RE = re.compile(r"^\*\*Gap\*\*:.*?(?=\n[ \t]*\n|\Z)", re.M | re.S)
CITED_TEST_RE = re.compile(r"`(tests/[\w/]+\.py)::(test_\w+)`")
GAP_TEST_NAME = re.compile(r"test_(?:s\d+_)+gap_\w+")  # a test of what is missing: test_<tags>_gap_<what>


def gap_paragraphs(text: str) -> list[str]:
    return GAP_RE.findall(text)


def _xfail_kind(source: str, name: str) -> str:
    """How test `name` in `source` is marked: "missing", "none", "xfail" or "strict" (strict=True and a reason)."""
    node = next((n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef) and n.name == name), None)
    if node is None:
        return "missing"
    kind = "none"
    for deco in node.decorator_list:
        call = deco if isinstance(deco, ast.Call) else None
        target = ast.unparse(call.func if call else deco)
        if target != "pytest.mark.xfail":
            continue
        words = {kw.arg: kw.value for kw in call.keywords} if call else {}
        strict = isinstance(words.get("strict"), ast.Constant) and words["strict"].value is True
        kind = "strict" if strict and "reason" in words else "xfail"
    return kind


def _gap_tests(source: str) -> list[str]:
    return [
        n.name
        for n in ast.walk(ast.parse(source))
        if isinstance(n, ast.FunctionDef) and GAP_TEST_NAME.fullmatch(n.name)
    ]


def gap_problems(text: str, sources: dict[str, str]) -> list[str]:
    """What is wrong between the **Gap** paragraphs of `text` and the tests in `sources` ({"tests/x.py": source})."""
    problems, cited = [], set()
    for paragraph in gap_paragraphs(text):
        head = " ".join(paragraph.split())[:70]
        tests = CITED_TEST_RE.findall(paragraph)
        if not tests:
            problems.append(f"a Gap names no test of what is missing: {head!r}")
        for path, name in tests:
            cited.add((path, name))
            where = f"{path}::{name}"
            if not GAP_TEST_NAME.fullmatch(name):
                problems.append(f"{where}, named by a Gap, is not named test_<tags>_gap_<what>")
            kind = _xfail_kind(sources[path], name) if path in sources else "missing"
            if kind == "missing":
                problems.append(f"{where}, named by a Gap, does not exist")
            elif kind != "strict":
                problems.append(f"{where}, named by a Gap, is not marked xfail(strict=True, reason=...)")
    for path, source in sorted(sources.items()):
        problems += [
            f"{path}::{name} is named after a gap but no Gap in docs/SAFETY.md names it"
            for name in _gap_tests(source)
            if (path, name) not in cited
        ]
    return problems


def _test_sources() -> dict[str, str]:
    return {path.relative_to(ROOT).as_posix(): path.read_text() for path in sorted((ROOT / "tests").rglob("test_*.py"))}


def test_architecture_every_gap_is_a_strict_xfail_test_and_every_gap_test_is_a_gap():
    text = SAFETY_DOC.read_text()
    assert len(gap_paragraphs(text)) == text.count("**Gap**:") >= 1  # the pattern finds every paragraph
    problems = gap_problems(text, _test_sources())
    assert problems == [], "docs/SAFETY.md and the gap tests disagree: " + "; ".join(problems)


GAP_TEST_SOURCE = """
import pytest

@pytest.mark.xfail(strict=True, reason="S1 gap: x")
def TEST_s1_gap_strict():
    assert False

@pytest.mark.xfail(reason="S1 gap: x")
def TEST_s1_gap_loose():
    assert False

@pytest.mark.xfail(strict=True)
def TEST_s1_gap_no_reason():
    assert False

def TEST_s1_gap_unmarked():
    assert False

@pytest.mark.xfail(strict=True, reason="x")
def TEST_s1_strict_but_not_named_a_gap():
    assert False
""".replace("def TEST_", "def test_")  # so that the tag scans of this file skip it


@pytest.mark.parametrize(
    "paragraph, wrong",
    [
        ("**Gap**: all is well. Shown by `tests/t.py::test_s1_gap_strict`.", None),
        ("**Gap**: nothing proves it.", "names no test"),
        ("**Gap**: x. Shown by `tests/t.py::test_s1_gap_unmarked`.", "is not marked xfail(strict=True"),
        ("**Gap**: x. Shown by `tests/t.py::test_s1_gap_loose`.", "is not marked xfail(strict=True"),
        ("**Gap**: x. Shown by `tests/t.py::test_s1_gap_no_reason`.", "is not marked xfail(strict=True"),
        ("**Gap**: x. Shown by\n`tests/t.py::test_s1_gap_gone`.", "does not exist"),
        ("**Gap**: x. Shown by `tests/other.py::test_s1_gap_strict`.", "does not exist"),
        (
            "**Gap**: x. Shown by `tests/t.py::test_s1_strict_but_not_named_a_gap`.",
            "is not named test_<tags>_gap_<what>",
        ),
    ],
)
def test_architecture_gap_check_fails_a_gap_without_a_strict_xfail_test(paragraph, wrong):
    problems = gap_problems(f"### S1 x\n\n{paragraph}\n\nMore text.\n", {"tests/t.py": GAP_TEST_SOURCE})
    problems = [p for p in problems if not p.endswith("names it")]  # the uncited gap tests: the next test
    if wrong is None:
        assert problems == []
    else:
        assert len(problems) == 1 and wrong in problems[0], problems


def test_architecture_gap_check_fails_a_gap_test_no_gap_names():
    problems = gap_problems("**Gap**: x. Shown by `tests/t.py::test_s1_gap_strict`.\n", {"tests/t.py": GAP_TEST_SOURCE})
    assert "tests/t.py::test_s1_gap_loose is named after a gap but no Gap in docs/SAFETY.md names it" in problems
    assert not any("test_s1_gap_strict" in p for p in problems)


# ---- the README's layout ------------------------------------------------------------------
LAYOUT_PACKAGES = ("lampctl", "web", "firmware_bridge")  # whose every module the layout names
IDENT_RE = re.compile(r"[a-z_][a-z0-9_]*")
# A file by its extension, or a folder by its trailing slash (`tests/mpvm/`); not "I/O" or "pass/fail".
FILE_TOKEN_RE = re.compile(r"[\w./-]*\w\.(?:py|md|txt|toml|svg|sh|json)\b|\b[a-z][\w-]*(?:/[\w-]+)*/(?![\w-])")


def layout_block(readme: str) -> str:
    """The code block under the README's "## Layout" heading."""
    section = readme.split("\n## Layout", 1)[1].split("\n## ", 1)[0]
    return section.split("```", 2)[1].split("\n", 1)[1]


def layout_entries(block: str) -> dict[str, str]:
    """{top-level entry ("lampctl/", "config.toml"): its text, the lines below it included}."""
    entries: dict[str, str] = {}
    name = None
    for line in block.splitlines():
        if line[:1].strip():
            name, _, rest = line.partition(" ")
            entries[name] = rest
        elif name is not None:
            entries[name] += "\n" + line
    return entries


def _without_parentheses(text: str) -> str:
    while re.search(r"\([^()]*\)", text):
        text = re.sub(r"\([^()]*\)", "", text)
    return text


def _real_names(package: Path) -> set[str]:
    """Every module (by its name) and folder under a package, at any depth."""
    names = {p.stem for p in package.rglob("*.py")} | {p.name for p in package.rglob("*") if p.is_dir()}
    return names - {"__init__", "__main__", "__pycache__"}


def _ignored(root: Path, name: str) -> bool:
    """Whether .gitignore leaves out a top-level folder (`var/`, `*.egg-info/`)."""
    ignore = root / ".gitignore"
    patterns = [line.strip().strip("/") for line in (ignore.read_text().splitlines() if ignore.is_file() else [])]
    return any(pattern and "/" not in pattern and fnmatch.fnmatch(name, pattern) for pattern in patterns)


def layout_problems(block: str, root: Path, packages: tuple[str, ...] = LAYOUT_PACKAGES) -> list[str]:
    """What the layout names that is not in `root`, and the folders and modules of `root` it leaves out."""
    entries = layout_entries(block)
    problems = [f"{name} is in the layout but not in the repository" for name in entries if not (root / name).exists()]
    for name, text in entries.items():
        folder = root / name
        if not folder.is_dir():
            continue
        problems += [
            f"{name}: {token} does not exist"
            for token in FILE_TOKEN_RE.findall(text)
            if not (folder / token).exists() and not (root / token).exists() and not list(folder.rglob(token))
        ]
        if name.strip("/") in packages:
            real = _real_names(folder)
            listed = [
                item.strip()
                for line in text.splitlines()
                if not line.rstrip().endswith(":")
                for item in _without_parentheses(line).split(",")
            ]
            problems += [
                f"{name}: {item} is not a module or folder of it"
                for item in listed
                if IDENT_RE.fullmatch(item) and item not in real
            ]
            words = set(IDENT_RE.findall(text))
            problems += [
                f"{name}{module} is left out of the layout"
                for module in sorted(real - words)
                if (folder / f"{module}.py").is_file()
                or list(folder.rglob(f"{module}.py"))
                or (folder / module / "__init__.py").is_file()
            ]
    folders = sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir() and not p.is_symlink() and not p.name.startswith(".") and not _ignored(root, p.name)
    )
    problems += [f"{folder}/ is left out of the layout" for folder in folders if f"{folder}/" not in entries]
    return problems


def test_architecture_readme_layout_names_every_folder_and_module_and_nothing_else():
    problems = layout_problems(layout_block((ROOT / "README.md").read_text()), ROOT)
    assert problems == [], "the README's layout and the tree differ: " + "; ".join(problems)


def test_architecture_layout_check_sees_what_is_missing_and_what_is_made_up(tmp_path):
    for path in (
        "pkg/__init__.py",
        "pkg/alpha.py",
        "pkg/beta.py",
        "pkg/sub/__init__.py",
        "pkg/sub/gamma.py",
        "docs/guide.md",
        "extra/x.txt",
        "var/data.db",
    ):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("")
    (tmp_path / "x.egg-info").mkdir()
    (tmp_path / ".gitignore").write_text("var/\n*.egg-info/\n")
    block = (
        "pkg/          the code, by concern:\n"
        "                alpha (the first), sub: gamma, delta\n"
        "docs/         guide.md and missing.md, not I/O nor pass/fail\n"
        "gone.toml     a file that is not there\n"
    )
    problems = layout_problems(block, tmp_path, packages=("pkg",))
    assert sorted(problems) == sorted(
        [
            "gone.toml is in the layout but not in the repository",
            "docs/: missing.md does not exist",
            "pkg/: delta is not a module or folder of it",
            "pkg/beta is left out of the layout",
            "extra/ is left out of the layout",
        ]
    )

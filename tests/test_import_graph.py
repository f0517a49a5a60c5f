"""The package's imports point one way: no cycle, not even through lazy imports.

Every `import` and `from ... import` of a jdarts module, at module level or
inside a function, is an edge from the importing module to the imported one
(`from jdarts.x import name` points to jdarts.x.name when that is a module,
else to jdarts.x). The implicit import of a parent package when a submodule
is imported is not an edge: Python runs the parent first whatever the code says.
"""
import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(__file__), os.pardir, "jdarts")


def _modules():
  """{dotted module name: file path} of every module in the jdarts package."""
  out = {}
  for dirpath, _, files in os.walk(ROOT):
    for f in files:
      if not f.endswith(".py"):
        continue
      rel = os.path.relpath(os.path.join(dirpath, f), os.path.join(ROOT, os.pardir))
      name = rel[:-3].replace(os.sep, ".")
      if name.endswith(".__init__"):
        name = name[: -len(".__init__")]
      out[name] = os.path.join(dirpath, f)
  return out


def _resolve(module: str, level: int, current: str, is_package: bool) -> str:
  if not level:
    return module
  base = current.split(".")
  base = base if is_package else base[:-1]
  base = base[: len(base) - (level - 1)]
  return ".".join(base + ([module] if module else []))


def import_graph():
  """{module: {modules it imports}} over the jdarts package (see the module docstring)."""
  modules = _modules()
  graph = {m: set() for m in modules}
  for name, path in modules.items():
    tree = ast.parse(open(path).read(), path)
    is_package = path.endswith("__init__.py")
    for node in ast.walk(tree):
      targets = []
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = _resolve(node.module or "", node.level, name, is_package)
        for a in node.names:
          sub = f"{base}.{a.name}"
          targets.append(sub if sub in modules else base)
      for t in targets:
        # `import jdarts.a.b` names jdarts.a.b; keep the longest known module.
        while t and t not in modules and "." in t:
          t = t.rsplit(".", 1)[0]
        if t in modules and t != name:
          graph[name].add(t)
  return graph


def find_cycles(graph):
  """The strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []
  counter = [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def _path(graph, comp):
  """One cycle through a component, for the failure message: a -> b -> ... -> a."""
  start = comp[0]
  members = set(comp)
  prev, frontier = {start: None}, [start]
  while frontier:
    nxt = []
    for v in frontier:
      for w in sorted(graph[v] & members):
        if w == start:
          chain = [v]
          while prev[chain[-1]] is not None:
            chain.append(prev[chain[-1]])
          return " -> ".join(reversed(chain)) + f" -> {start}"
        if w not in prev:
          prev[w] = v
          nxt.append(w)
    frontier = nxt
  return ", ".join(comp)


def test_the_package_has_no_import_cycle():
  graph = import_graph()
  cycles = find_cycles(graph)
  assert not cycles, "import cycles: " + "; ".join(_path(graph, c) for c in cycles)


def test_the_detector_finds_lazy_and_direct_cycles():
  """The checker itself: a cycle through a function-level import is found."""
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
  assert find_cycles(graph) == [["a", "b", "c"]]
  assert _path(graph, ["a", "b", "c"]) == "a -> b -> c -> a"
  assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_imports_inside_functions(tmp_path, monkeypatch):
  """A lazy import (inside a function) is an edge, and so is `from pkg import module`."""
  pkg = tmp_path / "jdarts"
  (pkg / "sub").mkdir(parents=True)
  (pkg / "__init__.py").write_text("")
  (pkg / "low.py").write_text("def f():\n  from jdarts import high\n")
  (pkg / "high.py").write_text("from jdarts import low\n")
  (pkg / "sub" / "__init__.py").write_text("from jdarts.sub.leaf import x\n")
  (pkg / "sub" / "leaf.py").write_text("from . import other\nx = 1\n")
  (pkg / "sub" / "other.py").write_text("")
  monkeypatch.setattr(__import__(__name__), "ROOT", str(pkg))
  graph = import_graph()
  assert graph["jdarts.low"] == {"jdarts.high"}
  assert graph["jdarts.sub"] == {"jdarts.sub.leaf"}
  assert graph["jdarts.sub.leaf"] == {"jdarts.sub.other"}
  assert find_cycles(graph) == [["jdarts.high", "jdarts.low"]]


def test_modules_are_small_and_say_what_they_are_for():
  """STYLE.md: modules of at most ~500 lines, each with a docstring."""
  too_long, undocumented = [], []
  for name, path in _modules().items():
    text = open(path).read()
    if len(text.splitlines()) > 520:
      too_long.append(f"{name} ({len(text.splitlines())} lines)")
    if text.strip() and ast.get_docstring(ast.parse(text)) is None:
      undocumented.append(name)
  assert not too_long, f"modules over ~500 lines: {too_long}"
  assert not undocumented, f"modules without a docstring: {undocumented}"

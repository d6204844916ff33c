"""Do the tests notice a small wrong change? A mutation audit of one module, one change at a time.

    .venv/bin/python tools/mutate.py functions/tts_stream/batches.py --out out/mutants.json -- tests/unit/test_batches.py

Each mutant is one change to the module's syntax tree: a comparison made strict or loose (< and <=), == made !=, a
condition negated, `and` swapped with `or`, a `not` dropped, + swapped with -, a whole number plus one, True and
False swapped, a return value made None, a call, raise or `+=` deleted, or one clause dropped from a DynamoDB
condition string ("A AND B"). For each, the tests named after `--` run with -x; a mutant they pass "survived". A
survivor is either a change that does not matter (a constant nobody depends on, a message only a log shows) or a
test missing: read each one. The module is restored afterwards, even on Ctrl-C or `kill`. Run it on a clone of the
repository, with nothing else using it: it rewrites the module in place, and the suite runs once per mutant.

--lines 100-200 limits it to mutants on those lines; --again OLD.json runs only the survivors of an earlier run
(of the same module text), with other tests.
"""

import argparse
import ast
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

_ORDER = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt}
_EQUAL = {ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot,
          ast.IsNot: ast.Is}
_ARITHMETIC = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.FloorDiv, ast.FloorDiv: ast.Mult, ast.Div: ast.Mult,
               ast.Mod: ast.FloorDiv}


def clauses(text: str) -> list[tuple[int, int]]:
    """Spans of the top-level AND/OR terms of a condition expression; [] if it has only one."""
    spans, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += (char == "(") - (char == ")")
        for word in (" AND ", " OR "):
            if depth == 0 and text.startswith(word, i):
                spans.append((start, i))
                start = i + len(word)
    spans.append((start, len(text)))
    return spans if len(spans) > 1 else []


def _drop_clause(text: str, n: int) -> str:
    kept = [text[a:b] for k, (a, b) in enumerate(clauses(text)) if k != n]
    return (" AND " if " AND " in text else " OR ").join(kept)


def _docstrings(tree) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.update((id(first), id(first.value)))
    return found


def kinds(node) -> list[str]:
    """The mutations one node takes."""
    out = []
    if isinstance(node, ast.Compare) and len(node.ops) == 1:
        op = type(node.ops[0])
        if op in _ORDER:
            out.append(f"{op.__name__}->{_ORDER[op].__name__}")
        if op in _EQUAL:
            out.append(f"{op.__name__}->{_EQUAL[op].__name__}")
    if isinstance(node, (ast.If, ast.While, ast.IfExp)):
        out.append("negate-test")
    if isinstance(node, ast.BoolOp):
        out.append("and<->or")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        out.append("drop-not")
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
        out.append(f"{type(node.op).__name__}->{_ARITHMETIC[type(node.op)].__name__}")
    if isinstance(node, ast.Constant) and type(node.value) is int:
        out.append("int+1")
    if isinstance(node, ast.Constant) and type(node.value) is bool:
        out.append("flip-bool")
    if isinstance(node, ast.Return) and node.value is not None and not (
            isinstance(node.value, ast.Constant) and node.value.value is None):
        out.append("return-None")
    if isinstance(node, (ast.Expr, ast.Raise, ast.AugAssign)):
        out.append("delete-stmt")
    if isinstance(node, ast.Constant) and type(node.value) is str and node.value == node.value.strip():
        out.extend(f"drop-clause-{n}" for n in range(len(clauses(node.value))))
    return out


def sites(source: str) -> list[tuple[int, str, int]]:
    """(node number in ast.walk order, mutation, line) for every mutant of the module."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    return [(number, kind, getattr(node, "lineno", 0)) for number, node in enumerate(ast.walk(tree))
            if id(node) not in skip for kind in kinds(node)]


def mutant(source: str, number: int, kind: str) -> str:
    tree = ast.parse(source)
    node = next(n for i, n in enumerate(ast.walk(tree)) if i == number)
    if kind == "negate-test":
        node.test = ast.UnaryOp(ast.Not(), node.test)
    elif kind == "and<->or":
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    elif kind == "drop-not":
        node.operand = ast.UnaryOp(ast.Not(), node.operand)  # not not x: the truth of x
    elif isinstance(node, ast.Compare):
        op = type(node.ops[0])
        node.ops[0] = (_ORDER[op] if op in _ORDER and kind.endswith(_ORDER[op].__name__) else _EQUAL[op])()
    elif isinstance(node, ast.BinOp):
        node.op = _ARITHMETIC[type(node.op)]()
    elif kind == "int+1":
        node.value += 1
    elif kind == "flip-bool":
        node.value = not node.value
    elif kind == "return-None":
        node.value = ast.Constant(None)
    elif kind == "delete-stmt":
        for parent in ast.walk(tree):
            for field, value in ast.iter_fields(parent):
                if isinstance(value, list) and any(child is node for child in value):
                    value[[id(c) for c in value].index(id(node))] = ast.Pass()
    elif kind.startswith("drop-clause-"):
        node.value = _drop_clause(node.value, int(kind.rsplit("-", 1)[1]))
    return ast.unparse(ast.fix_missing_locations(tree))


def _run(command: list[str], timeout_s: float) -> tuple[object, float]:
    start = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, timeout=timeout_s,
                              env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
        return done.returncode, time.monotonic() - start
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - start


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("module", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="JSON of every mutant and its result")
    parser.add_argument("--lines", help="only mutants on these lines: FIRST-LAST")
    parser.add_argument("--again", type=Path, help="only the survivors of this earlier --out")
    parser.add_argument("tests", nargs="+", help="pytest arguments, after --")
    args = parser.parse_args(argv)
    original = args.module.read_text()
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *args.tests]
    todo = sites(original)
    if args.lines:
        first, last = map(int, args.lines.split("-"))
        todo = [s for s in todo if first <= s[2] <= last]
    if args.again:
        survivors = {(r["node"], r["kind"]) for r in json.loads(args.again.read_text()) if r["result"] == "survived"}
        todo = [s for s in todo if s[:2] in survivors]
    results = []
    # kill (SIGTERM) stops a run as Ctrl-C does, so the module is restored: a background job ignores Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        args.module.write_text(ast.unparse(ast.parse(original)))  # the tests must pass on the unparsed text
        code, baseline_s = _run(command, 3600)
        if code != 0:
            print(f"the tests fail on the unchanged module (exit {code}): fix that first", file=sys.stderr)
            return 2
        print(f"{len(todo)} mutants; the tests take {baseline_s:.0f} s", flush=True)
        for count, (number, kind, line) in enumerate(todo, 1):
            args.module.write_text(mutant(original, number, kind))
            code, took = _run(command, baseline_s * 3 + 20)
            result = "killed" if code != 0 else "survived"
            results.append({"line": line, "kind": kind, "node": number, "result": result, "seconds": round(took)})
            print(f"[{count}/{len(todo)}] line {line} {kind}: {result}", flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1))
    except KeyboardInterrupt:
        print(f"stopped after {len(results)} of {len(todo)} mutants; {args.module} is restored", file=sys.stderr)
        return 130
    finally:
        args.module.write_text(original)
    survived = [r for r in results if r["result"] == "survived"]
    print(f"{len(survived)} of {len(results)} survived" + "".join(
        f"\n  line {r['line']}: {r['kind']}" for r in survived))
    return 0


if __name__ == "__main__":
    sys.exit(main())

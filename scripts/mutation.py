"""Mutation testing of the core modules (issue 23): small deliberate bugs, and whether the
tests notice them. Not part of the CI test command (minutes per module: docs/testing.md).

    nice -n 19 .venv/bin/python scripts/mutation.py -t status -j 1   # one module (as measured)
    .venv/bin/python scripts/mutation.py                 # every target, 2 workers
    .venv/bin/python scripts/mutation.py -t status -t duplicates -j 1
    .venv/bin/python scripts/mutation.py --list -t rate_redis   # the mutants, not run
    .venv/bin/python scripts/mutation.py --show m-1a2b3c4d      # one mutant: diff + test output
    .venv/bin/python scripts/mutation.py -t policy --json run1.json   # every outcome to a file
    .venv/bin/python scripts/mutation.py -t policy --survivors-of run1.json --tests tests/x.py
        # after tests were added: only run1's survivors, against the new tests

Run it from the repository (a fresh clone after ``bash scripts/bootstrap.sh --dev``); the
real peers the tests use (redis-server) must be installed. The tree is copied once per
worker into a temporary folder: the working copy is never modified.

Why a small mutator of our own (docs/testing.md): the limiter, the slots and the ledger keep
their arithmetic in Lua scripts, which neither mutmut nor cosmic-ray mutates, and the tests
start peers and subprocesses (``migrator scp``, workers) that a mutant must reach. An earlier
trial noted that mutmut 3.8 crashed under its fork isolation with these tests and that
cosmic-ray re-ran pytest per mutant at ~3.3 s each; those figures were not measured again.

How it works:

* mutants are made from the AST (``ast`` only, spliced into the original text so that line
  numbers stay): comparison boundaries and negations, ``and``/``or``, ``not`` dropped,
  arithmetic operators, numbers +1, ``True``/``False``, ``min``/``max``, ``break``/
  ``continue``, a call statement removed; inside the Lua scripts (module-level strings
  that call ``redis.call``): arithmetic and comparison operators, ``math.max``/``min``,
  ``and``/``or``, integers +1. Not mutated: string texts (messages), logging calls,
  annotations, docstrings, asserts, ``__repr__``, class-body constants;
* each worker is a fork server: it imports pytest, the project and the test modules once,
  then forks a child per mutant; the child swaps the mutated functions' code objects into
  the loaded modules (identities stay: objects imported elsewhere see the mutant too) and
  runs the tests with ``pytest.main``. The mutated file is also written into the worker's
  copy of the tree, so that subprocesses the tests start (``migrator scp``, workers) run
  the mutant as well;
* the tests run for a mutant are those of the target's list that executed its lines in a
  traced baseline run, fastest first, stopping at the first failure; a mutant on lines no
  test executed in-process gets the target's whole list (the code may run in a
  subprocess). A mutant that hangs is killed after a time limit (counted as killed);
* survivors are printed with their id (``m-`` + 8 hex digits, stable while the function's
  text does not change); the ids documented in docs/testing.md are marked there.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Target:
    name: str
    path: str
    tests: tuple[str, ...]
    #: Only these functions (qualified names; a class name takes its methods); None: all
    only: tuple[str, ...] | None = None
    #: Mutate the Lua in module-level script strings
    lua: bool = False


#: dicomfile's header checks: its own tests (test_inspect_fast.py: files built byte by byte
#: at the fast parser's boundaries) and the in-process ones of the bad-input corpus (not
#: those that run store/run against Orthanc: minutes per mutant)
DICOMFILE_TESTS: tuple[str, ...] = (
    "tests/test_dicomfile.py",
    "tests/test_inspect_fast.py",
    *(
        f"tests/test_bad_inputs.py::{name}"
        for name in (
            "test_a_cut_encapsulated_file_is_truncated_and_trailing_elements_are_fine",
            "test_truncation_is_found_past_a_header_longer_than_the_first_read",
            "test_a_head_is_enough_when_pixel_data_starts_in_it",
            "test_one_bit_pixel_data_is_measured_in_bits",
            "test_sound_files_pass_the_damage_checks",
            "test_pydicoms_truncated_samples_are_caught",
            "test_a_named_pipe_given_by_name_is_refused_without_blocking",
            "test_missing_sop_uids_fail_dicom_and_skip_what_only_looks_like_a_dataset",
            "test_a_file_cut_anywhere_is_never_sent_as_whole",
            "test_a_cut_after_pixel_data_is_truncated_too",
        )
    ),
)

# The fast tests that pin each core module. Listing a file takes all its tests; the run
# picks, per mutant, those that executed the mutated lines.
TARGETS: list[Target] = [
    Target("status", "migrator/status.py", ("tests/test_status.py",)),
    Target(
        "rate",
        "migrator/limits/rate.py",
        ("tests/test_ratelimit.py",),
    ),
    Target(
        "rate_redis",
        "migrator/limits/rate_redis.py",
        ("tests/test_ratelimit_redis.py",),
        lua=True,
    ),
    Target(
        "slots",
        "migrator/limits/slots.py",
        ("tests/test_slots.py", "tests/test_pool_peers.py"),
        lua=True,
    ),
    Target("breaker", "migrator/limits/breaker.py", ("tests/test_breaker.py",), lua=True),
    Target("duplicates", "migrator/duplicates.py", ("tests/test_duplicates.py",)),
    Target(
        "claims",
        "migrator/transfer/claims.py",
        ("tests/test_duplicates.py", "tests/test_transfer_unit.py"),
    ),
    Target(
        "ledger",
        "migrator/ledger/core.py",
        ("tests/test_ledger.py",),
        only=(
            "Ledger.filter_unplanned",
            "Ledger.add_batch",
            "Ledger.add_refused",
            "Ledger._write",
            "Ledger.files",
            "Ledger.claim_uids",
            "Ledger.take_over_uid",
            "Ledger.uid_owner",
            "Ledger.record_many",
            "Ledger._plan_of",
            "Ledger.stored_ids",
            "Ledger.states",
            "Ledger.counts",
            "Ledger.failed_ids",
            "Ledger.reopen",
            "Ledger.deliveries",
            "Ledger.delivery_done",
            "Ledger.claim_batch",
            "Ledger.refresh_batch",
            "Ledger.release_batch",
        ),
    ),
    Target("ledger_encoding", "migrator/ledger/encoding.py", ("tests/test_ledger.py",)),
    Target(
        "ledger_scripts",
        "migrator/ledger/scripts.py",
        ("tests/test_ledger.py",),
        lua=True,
    ),
    Target(
        "policy",
        "migrator/transfer/policy.py",
        (
            "tests/test_transfer_unit.py",
            "tests/test_policy_unit.py",
            "tests/test_policy_waits.py",
            "tests/test_policy_lanes.py",
            "tests/test_policy_collect.py",
            "tests/test_policy_settle.py",
            "tests/test_policy_ahead.py",
            "tests/test_pool_peers.py",
            "tests/test_precheck.py",
        ),
    ),
    Target(
        "pool",
        "migrator/transfer/pool.py",
        ("tests/test_transfer_unit.py", "tests/test_pool_peers.py"),
    ),
    Target("dicomfile_inspect", "migrator/dicomfile/inspect.py", DICOMFILE_TESTS),
    Target("dicomfile_damage", "migrator/dicomfile/damage.py", DICOMFILE_TESTS),
    Target("dicomfile_encoding", "migrator/dicomfile/encoding.py", DICOMFILE_TESTS),
    Target("dicomfile_header", "migrator/dicomfile/header.py", DICOMFILE_TESTS),
]


# -- mutants ------------------------------------------------------------------------------


@dataclass
class Mutant:
    target: str
    path: str
    func: str
    line: int
    end_line: int
    op: str
    before: str
    after: str
    #: byte offsets of the replaced text in the original file, and the replacement
    start: int
    end: int
    replacement: str
    #: module-level names whose uses pick the tests (constants, Lua scripts)
    uses: list[str] = field(default_factory=list)
    id: str = ""

    def apply(self, source: bytes) -> bytes:
        return source[: self.start] + self.replacement.encode() + source[self.end :]


#: comparison operator (its token as a regex) -> the mutant's token: boundaries, negations
_CMP_TOKENS: dict[type[ast.cmpop], tuple[str, str]] = {
    ast.Eq: (r"==", "!="),
    ast.NotEq: (r"!=", "=="),
    ast.Lt: (r"<(?!=)", "<="),
    ast.LtE: (r"<=", "<"),
    ast.Gt: (r">(?!=)", ">="),
    ast.GtE: (r">=", ">"),
    ast.Is: (r"\bis\b(?!\s+not\b)", "is not"),
    ast.IsNot: (r"\bis\s+not\b", "is"),
    ast.In: (r"(?<!not )\bin\b", "not in"),
    ast.NotIn: (r"\bnot\s+in\b", "in"),
}
#: arithmetic operator (its token as a regex) -> the mutant's token
_BIN_TOKENS: dict[type[ast.operator], tuple[str, str]] = {
    ast.Add: (r"\+", "-"),
    ast.Sub: (r"-", "+"),
    ast.Mult: (r"(?<!\*)\*(?!\*)", "/"),
    ast.Div: (r"(?<!/)/(?!/)", "*"),
    ast.FloorDiv: (r"//", "*"),
    ast.Mod: (r"%", "//"),
    ast.Pow: (r"\*\*", "*"),
    ast.LShift: (r"<<", ">>"),
    ast.RShift: (r">>", "<<"),
    ast.BitAnd: (r"&", "|"),
    ast.BitOr: (r"\|", "&"),
    ast.BitXor: (r"\^", "|"),
}
_LOGGERS = {"log", "logger", "logging", "warnings"}


def _is_text(node: ast.AST) -> bool:
    return isinstance(node, ast.JoinedStr) or (
        isinstance(node, ast.Constant) and isinstance(node.value, str | bytes)
    )


def _is_log_call(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    while isinstance(func, ast.Attribute):
        func = func.value
    return isinstance(func, ast.Name) and func.id in _LOGGERS


def _is_lua(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and ("redis.call" in node.value or "local " in node.value or "return " in node.value)
    )


class _Finder:
    def __init__(self, target: Target, source: bytes) -> None:
        self.target = target
        self.source = source
        self.tree = ast.parse(source)
        self.line_starts = [0]
        for i, byte in enumerate(source):
            if byte == 0x0A:
                self.line_starts.append(i + 1)
        self.mutants: list[Mutant] = []

    # offsets -----------------------------------------------------------------------------
    def _span(self, node: ast.AST) -> tuple[int, int]:
        start = self.line_starts[node.lineno - 1] + node.col_offset  # type: ignore[attr-defined]
        end_line = node.end_lineno or node.lineno  # type: ignore[attr-defined]
        end = self.line_starts[end_line - 1] + (node.end_col_offset or 0)  # type: ignore[attr-defined]
        return start, end

    def _add(
        self,
        func: str,
        node: ast.AST,
        op: str,
        edit: tuple[int, int, str],
        *,
        uses: list[str] | None = None,
    ) -> None:
        """A mutant of ``node``: the bytes ``edit[0]:edit[1]`` of the file become
        ``edit[2]`` (the rest of the text, its layout and line numbers stay)."""
        start, end = self._span(node)
        e_start, e_end, text = edit
        old = self.source[start:end].decode()
        new = (self.source[start:e_start] + text.encode() + self.source[e_end:end]).decode()
        self.mutants.append(
            Mutant(
                target=self.target.name,
                path=self.target.path,
                func=func,
                line=node.lineno,  # type: ignore[attr-defined]
                end_line=node.end_lineno or node.lineno,  # type: ignore[attr-defined]
                op=op,
                before=" ".join(old.split()),
                after=" ".join(new.split()),
                start=e_start,
                end=e_end,
                replacement=text,
                uses=uses or [],
            )
        )

    def _whole(self, node: ast.AST, text: str) -> tuple[int, int, str]:
        """Replace the node's text (a statement: keep its line count)."""
        start, end = self._span(node)
        newlines = self.source[start:end].count(b"\n")
        return start, end, text + "\n" * newlines

    def _token(
        self, left: ast.AST, right: ast.AST, pattern: str, text: str
    ) -> tuple[int, int, str] | None:
        """Replace the operator token (regex ``pattern``) between two operands: found in the
        text between them, outside comments."""
        _, gap_start = self._span(left)
        gap_end, _ = self._span(right)
        gap = self.source[gap_start:gap_end].decode()
        code = re.sub(r"#[^\n]*", lambda m: " " * len(m.group()), gap)
        found = re.search(pattern, code)
        if found is None:
            return None
        start = gap_start + len(gap[: found.start()].encode())
        end = gap_start + len(gap[: found.end()].encode())
        return start, end, text

    # walking -----------------------------------------------------------------------------
    def run(self) -> list[Mutant]:
        for stmt in self.tree.body:
            self._top(stmt)
        seen: dict[str, int] = {}
        for m in self.mutants:
            key = f"{m.path}|{m.func}|{m.op}|{m.before}|{m.after}"
            n = seen.get(key, 0)
            seen[key] = n + 1
            digest = hashlib.sha1(f"{key}|{n}".encode()).hexdigest()[:8]
            m.id = f"m-{digest}"
        return self.mutants

    def _wanted(self, qualname: str) -> bool:
        only = self.target.only
        if only is None:
            return True
        return any(qualname == o or qualname.startswith(o + ".") for o in only)

    def _top(self, stmt: ast.stmt, prefix: str = "") -> None:
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
            qual = prefix + stmt.name
            if stmt.name != "__repr__" and self._wanted(qual):
                self._function(stmt, qual)
        elif isinstance(stmt, ast.ClassDef):
            for inner in stmt.body:
                if isinstance(inner, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    self._top(inner, prefix + stmt.name + ".")
        elif not prefix and isinstance(stmt, ast.Assign | ast.AnnAssign):
            self._module_constant(stmt)

    def _module_constant(self, stmt: ast.Assign | ast.AnnAssign) -> None:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        names = [t.id for t in targets if isinstance(t, ast.Name)]
        if not names or stmt.value is None:
            return
        name = names[0]
        value = stmt.value
        if self.target.lua:
            for node in ast.walk(value):
                if _is_lua(node):
                    self._lua(name, node)  # type: ignore[arg-type]
        # numbers in a constant (THRESHOLD = 10, a set of status codes, 16 * 1024)
        literal = (ast.Constant, ast.Set, ast.Tuple, ast.List, ast.Dict, ast.BinOp, ast.UnaryOp)
        grammar = (ast.operator, ast.unaryop, ast.expr_context)
        if all(isinstance(n, literal + grammar) for n in ast.walk(value)):
            for node in ast.walk(value):
                if isinstance(node, ast.Constant) and _number(node.value):
                    start, end = self._span(node)
                    text = self.source[start:end].decode()
                    edit = (start, end, _bump_text(text, node.value))
                    self._add(f"<{name}>", node, "number", edit, uses=[name])

    def _function(self, fn: ast.FunctionDef | ast.AsyncFunctionDef, qual: str) -> None:
        # Defaults of parameters the body never reads (a Protocol's stub, NullLimiter)
        # cannot change behaviour: such mutants would be equivalent by construction.
        read = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name)}
        positional = [*fn.args.posonlyargs, *fn.args.args]
        tail = positional[len(positional) - len(fn.args.defaults) :]
        pairs = list(zip(tail, fn.args.defaults, strict=True))
        pairs += [(a, d) for a, d in zip(fn.args.kwonlyargs, fn.args.kw_defaults, strict=True) if d]
        for arg, default in pairs:
            if arg.arg in read:
                self._expr(default, qual)
        body = fn.body
        if body and isinstance(body[0], ast.Expr) and _is_text(body[0].value):
            body = body[1:]  # the docstring
        for stmt in body:
            self._stmt(stmt, qual)

    def _stmt(self, stmt: ast.stmt, qual: str) -> None:
        if isinstance(stmt, ast.Assert | ast.Pass | ast.Import | ast.ImportFrom):
            return
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
            self._function(stmt, f"{qual}.{stmt.name}")
            return
        if isinstance(stmt, ast.ClassDef):
            return
        if isinstance(stmt, ast.Expr):
            if _is_log_call(stmt.value) or _is_text(stmt.value):
                return
            if isinstance(stmt.value, ast.Call):
                self._add(qual, stmt, "drop-call", self._whole(stmt, "pass"))
        if isinstance(stmt, ast.Continue):
            self._add(qual, stmt, "continue->break", self._whole(stmt, "break"))
            return
        if isinstance(stmt, ast.Break):
            self._add(qual, stmt, "break->continue", self._whole(stmt, "continue"))
            return
        if isinstance(stmt, ast.AugAssign):
            tokens = _BIN_TOKENS.get(type(stmt.op))
            if tokens is not None and not _is_text(stmt.value):
                edit = self._token(stmt.target, stmt.value, tokens[0] + "=", tokens[1] + "=")
                if edit is not None:
                    self._add(qual, stmt, "aug-op", edit)
        for name, value in ast.iter_fields(stmt):
            if name in ("annotation", "returns", "decorator_list", "type_comment"):
                continue
            for child in value if isinstance(value, list) else [value]:
                if isinstance(child, ast.stmt):
                    self._stmt(child, qual)
                elif isinstance(child, ast.expr):
                    self._expr(child, qual)
                elif isinstance(child, ast.excepthandler | ast.withitem | ast.match_case):
                    for sub in ast.iter_child_nodes(child):
                        if isinstance(sub, ast.stmt):
                            self._stmt(sub, qual)
                        elif isinstance(sub, ast.expr):
                            self._expr(sub, qual)

    def _expr(self, node: ast.expr, qual: str) -> None:
        if isinstance(node, ast.JoinedStr) or _is_log_call(node):
            return
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for i, op in enumerate(node.ops):
                pattern, new_tok = _CMP_TOKENS[type(op)]
                edit = self._token(operands[i], operands[i + 1], pattern, new_tok)
                if edit is not None:
                    self._add(qual, node, "compare", edit)
        elif isinstance(node, ast.BoolOp):
            old_tok, new_tok = ("and", "or") if isinstance(node.op, ast.And) else ("or", "and")
            for i in range(len(node.values) - 1):
                pattern = rf"\b{old_tok}\b"
                edit = self._token(node.values[i], node.values[i + 1], pattern, new_tok)
                if edit is not None:
                    self._add(qual, node, "and/or", edit)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.USub):
            start, _ = self._span(node)
            operand_start, _ = self._span(node.operand)
            self._add(qual, node, "drop-unary", (start, operand_start, ""))
        elif isinstance(node, ast.BinOp):
            tokens = _BIN_TOKENS.get(type(node.op))
            if tokens is not None and not (_is_text(node.left) or _is_text(node.right)):
                edit = self._token(node.left, node.right, tokens[0], tokens[1])
                if edit is not None:
                    self._add(qual, node, "arith", edit)
        elif isinstance(node, ast.Constant):
            start, end = self._span(node)
            if isinstance(node.value, bool):
                self._add(qual, node, "bool", (start, end, repr(not node.value)))
            elif _number(node.value):
                text = self.source[start:end].decode()
                self._add(qual, node, "number", (start, end, _bump_text(text, node.value)))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("min", "max")
        ):
            start, end = self._span(node.func)
            other = "max" if node.func.id == "min" else "min"
            self._add(qual, node, "min/max", (start, end, other))
        for name, value in ast.iter_fields(node):
            if name in ("annotation", "returns"):
                continue
            for child in value if isinstance(value, list) else [value]:
                if isinstance(child, ast.expr):
                    self._expr(child, qual)
                elif isinstance(child, ast.comprehension):
                    for sub in [child.iter, *child.ifs]:
                        self._expr(sub, qual)
                elif isinstance(child, ast.keyword):
                    self._expr(child.value, qual)

    # Lua ---------------------------------------------------------------------------------
    def _lua(self, name: str, node: ast.Constant) -> None:
        text: str = node.value
        for pos, old, new, op in _lua_mutations(text):
            mutated = text[:pos] + new + text[pos + len(old) :]
            line_no = node.lineno + text[:pos].count("\n")
            line_start = text.rfind("\n", 0, pos) + 1
            line_end = text.find("\n", pos)
            line_end = len(text) if line_end < 0 else line_end
            before = text[line_start:line_end].strip()
            after = (text[line_start:pos] + new + text[pos + len(old) : line_end]).strip()
            start, end = self._span(node)
            original = self.source[start:end].decode()
            self.mutants.append(
                Mutant(
                    target=self.target.name,
                    path=self.target.path,
                    func=f"<lua {name}>",
                    line=line_no,
                    end_line=line_no,
                    op=f"lua-{op}",
                    before=before,
                    after=after,
                    start=start,
                    end=end,
                    replacement="(" + repr(mutated) + "\n" * original.count("\n") + ")",
                    uses=[name],
                )
            )


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _bump_text(text: str, value: int | float) -> str:
    """The number + 1, written as the original is (hex stays hex)."""
    if text.lower().startswith("0x"):
        return f"0x{int(value) + 1:0{len(text) - 2}X}"
    if "_" in text and isinstance(value, int):
        return f"{value + 1:_}"
    return repr(value + 1)


_LUA_TOKEN = re.compile(
    r"(?P<op>==|~=|<=|>=|(?<![<>=~])[<>](?!=)| \+ | - | \* | / |(?<=\w)\*(?=\w)|(?<=\))\*|\*(?=\()"
    r"|math\.max|math\.min|math\.ceil|math\.floor| and | or |not )"
    r"|(?P<num>(?<![\w.%])\d+(?![\w.]))"
)
_LUA_SWAP = {
    "==": "~=",
    "~=": "==",
    "<=": "<",
    ">=": ">",
    "<": "<=",
    ">": ">=",
    " + ": " - ",
    " - ": " + ",
    " * ": " / ",
    " / ": " * ",
    "*": "/",
    "math.max": "math.min",
    "math.min": "math.max",
    "math.ceil": "math.floor",
    "math.floor": "math.ceil",
    " and ": " or ",
    " or ": " and ",
    "not ": "",
}


def _lua_code_spans(text: str) -> Iterator[tuple[int, int]]:
    """The parts of a Lua chunk that are code: not comments, not quoted strings."""
    i, start, n = 0, 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("--", i):
            yield start, i
            j = text.find("\n", i)
            i = n if j < 0 else j
            start = i
        elif c in "'\"":
            yield start, i
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            i = j + 1
            start = i
        else:
            i += 1
    yield start, n


def _lua_mutations(text: str) -> Iterator[tuple[int, str, str, str]]:
    for a, b in _lua_code_spans(text):
        for m in _LUA_TOKEN.finditer(text, a, b):
            if m.group("num") is not None:
                old = m.group("num")
                yield m.start(), old, str(int(old) + 1), "number"
            else:
                old = m.group("op")
                yield m.start(), old, _LUA_SWAP[old], "op"


def find_mutants(target: Target, root: Path = ROOT) -> list[Mutant]:
    return _Finder(target, (root / target.path).read_bytes()).run()


# -- the fork server (one per worker, in its own copy of the tree) -------------------------


def serve(tree: Path) -> None:
    """Read jobs (JSON lines) on stdin, answer on the original stdout; pytest's output goes
    to a log per job."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    jobs = sys.stdin
    log = os.open(tree / "server.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.chdir(tree)
    sys.path.insert(0, str(tree))
    import pytest

    first = json.loads(jobs.readline())
    # Import the project and the test modules once (collection only), for every child.
    pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", *first["tests"]])
    import threading

    if threading.active_count() > 1:
        print(f"warning: {threading.active_count()} threads before forking", file=sys.stderr)
    proto.write(json.dumps({"ready": True}) + "\n")
    for raw in jobs:
        job = json.loads(raw)
        result = _run_job(tree, job)
        proto.write(json.dumps(result) + "\n")


def _run_job(tree: Path, job: dict[str, Any]) -> dict[str, Any]:
    path = tree / job["path"]
    original = path.read_bytes()
    stat = path.stat()
    mutated = job.get("source")
    out_path = tree / "job.out"
    if mutated is not None:
        path.write_bytes(mutated.encode())
        # another mtime than the .pyc records: subprocesses compile the mutant
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 7_000_000_000))
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 3
        try:
            os.setsid()
            fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            code = _child(tree, job)
        except BaseException as exc:
            print(f"mutation child: {type(exc).__name__}: {exc}", file=sys.stderr)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    timed_out = False
    status = 0
    deadline = t0 + job["timeout"]
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            timed_out = True
            _kill_tree(pid)
            _, status = os.waitpid(pid, 0)
            break
        time.sleep(0.02)
    _kill_tree(pid)  # whatever the tests left behind in the child's session
    seconds = time.monotonic() - t0
    if mutated is not None:
        path.write_bytes(original)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    rc = os.waitstatus_to_exitcode(status)
    output = out_path.read_text(errors="replace")
    return {
        "rc": rc,
        "timed_out": timed_out,
        "seconds": round(seconds, 3),
        "output": output[-20000:] if job.get("want_output") or rc not in (0, 1) else "",
        "trace": job.get("trace_file"),
    }


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def _kill_tree(pid: int) -> None:
    """Kill the child and every process it started (by pid, the child's own session)."""
    for p in [pid, *_descendants(pid)]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _child(tree: Path, job: dict[str, Any]) -> int:
    import pytest

    args = ["-q", "-p", "no:cacheprovider", "-x", "--no-header", "-o", "addopts="]
    args += ["--timeout", str(job.get("test_timeout", 60))]
    if job.get("source") is not None:
        try:
            _swap_in(tree, job["path"], job["source"])
        except Exception as exc:
            print(f"mutant does not load: {type(exc).__name__}: {exc}")
            return 4
    plugins: list[object] = []
    if job.get("trace_file"):
        plugins.append(_Tracer(str(tree / job["path"]), job["trace_file"]))
        args.remove("-x")
    return int(pytest.main([*args, *job["tests"]], plugins=plugins))


def _swap_in(tree: Path, rel: str, source: str) -> None:
    """Make the loaded module behave as ``source``: every function of it gets the code
    (and defaults) compiled from the mutant; changed module-level constants are rebound,
    here and in the modules that imported them by name."""
    modname = rel[: -len(".py")].replace("/", ".")
    if modname.endswith(".__init__"):
        modname = modname[: -len(".__init__")]
    mod = sys.modules.get(modname)
    if mod is None:
        mod = __import__(modname, fromlist=["_"])
    code = compile(source, str(tree / rel), "exec")
    ns: dict[str, Any] = {
        "__name__": modname,
        "__file__": mod.__file__,
        "__package__": mod.__package__,
        "__spec__": mod.__spec__,
        "__builtins__": __builtins__,
    }
    exec(code, ns)
    filename = str(tree / rel)

    def swap_function(old: Any, new: Any) -> None:
        while hasattr(old, "__wrapped__") and hasattr(new, "__wrapped__"):
            old, new = old.__wrapped__, new.__wrapped__
        if not (hasattr(old, "__code__") and hasattr(new, "__code__")):
            return
        if old.__code__.co_filename != filename:
            return  # generated (dataclass methods) or imported
        old.__code__ = new.__code__
        old.__defaults__ = new.__defaults__
        old.__kwdefaults__ = new.__kwdefaults__

    def swap_class(old: type, new: type) -> None:
        for attr, value in vars(old).items():
            other = vars(new).get(attr)
            if other is None:
                continue
            if isinstance(value, staticmethod | classmethod):
                swap_function(value.__func__, other.__func__)
            elif isinstance(value, property):
                for part in ("fget", "fset", "fdel"):
                    a, b = getattr(value, part), getattr(other, part)
                    if a is not None and b is not None:
                        swap_function(a, b)
            elif isinstance(value, type) and value.__module__ == modname:
                swap_class(value, other)
            elif callable(value):
                swap_function(value, other)

    plain = (int, float, str, bytes, bool, tuple, frozenset, set, dict, list, type(None))
    for name, old in list(vars(mod).items()):
        new = ns.get(name)
        if new is None:
            continue
        if isinstance(old, type):
            if old.__module__ == modname:
                swap_class(old, new)
        elif callable(old) and getattr(old, "__module__", None) == modname:
            swap_function(old, new)
        elif isinstance(old, plain) and type(new) is type(old) and new != old:
            setattr(mod, name, new)
            for other in list(sys.modules.values()):
                d = getattr(other, "__dict__", None)
                if other is not mod and d is not None and d.get(name) is old:
                    d[name] = new


class _Tracer:
    """A pytest plugin: which lines of one file each test executes (sys.settrace, only in
    that file's frames), and how long each test takes."""

    def __init__(self, filename: str, out: str) -> None:
        self.filename = filename
        self.out = out
        self.current: set[int] | None = None
        self.lines: dict[str, set[int]] = {}
        self.seconds: dict[str, float] = {}
        self.failed: list[str] = []

    def _global(self, frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename != self.filename:
            return None
        return self._local

    def _local(self, frame: Any, event: str, arg: Any) -> Any:
        if event == "line" and self.current is not None:
            self.current.add(frame.f_lineno)
        return self._local

    def pytest_runtest_protocol(self, item: Any) -> Any:
        import threading

        self.current = self.lines.setdefault(item.nodeid, set())
        sys.settrace(self._global)
        threading.settrace(self._global)
        return None

    def pytest_runtest_logreport(self, report: Any) -> None:
        self.seconds[report.nodeid] = self.seconds.get(report.nodeid, 0.0) + report.duration
        if report.failed:
            self.failed.append(report.nodeid)
        if report.when == "teardown":
            sys.settrace(None)
            import threading

            threading.settrace(None)  # type: ignore[arg-type]
            self.current = None

    def pytest_sessionfinish(self) -> None:
        data = {
            "lines": {k: sorted(v) for k, v in self.lines.items()},
            "seconds": self.seconds,
            "failed": self.failed,
        }
        Path(self.out).write_text(json.dumps(data))


# -- the orchestrator ---------------------------------------------------------------------


class Worker:
    def __init__(self, tree: Path, tests: list[str]) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), env.get("PYTHONPATH")]))
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        self.tree = tree
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve", str(tree)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=tree,
            env=env,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"tests": tests}) + "\n")
        self.proc.stdin.flush()
        ready = self.proc.stdout.readline()
        if not ready:
            raise RuntimeError(f"worker did not start; see {tree / 'server.log'}")
        self.busy: Mutant | None = None

    def send(self, job: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()

    def receive(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker died; see {self.tree / 'server.log'}")
        result: dict[str, Any] = json.loads(line)
        return result

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


def copy_tree(dest: Path) -> None:
    ignore = shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache",
        ".hypothesis", "node_modules",
    )  # fmt: skip
    shutil.copytree(ROOT, dest, ignore=ignore, symlinks=True)
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "migrator", "workers"], cwd=dest, check=True
    )


def _select(m: Mutant, cover: dict[str, Any], source: str) -> list[str]:
    """The tests that executed the mutant's lines (or those of the code that uses the
    constant it changes), fastest first; [] when none did."""
    lines_by_test: dict[str, list[int]] = cover["lines"]
    wanted: set[int] = set(range(m.line, m.end_line + 1))
    if m.uses:
        wanted = _use_lines(source, m.uses)
    tests = [t for t, lines in lines_by_test.items() if wanted.intersection(lines)]
    if not tests and not m.uses:
        # a default argument, evaluated at import: the tests of the function's body
        fn = _function_lines(source, m.func)
        tests = [t for t, lines in lines_by_test.items() if fn.intersection(lines)]
    return sorted(tests, key=lambda t: cover["seconds"].get(t, 0.0))


def _function_lines(source: str, qual: str) -> set[int]:
    parts = qual.split(".")
    body: list[ast.stmt] = ast.parse(source).body
    node: ast.AST | None = None
    for part in parts:
        node = next(
            (
                n
                for n in body
                if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                and n.name == part
            ),
            None,
        )
        if node is None:
            return set()
        body = node.body  # type: ignore[attr-defined]
    assert node is not None
    return set(range(node.lineno, (node.end_lineno or node.lineno) + 1))  # type: ignore[attr-defined]


def _use_lines(source: str, names: list[str]) -> set[int]:
    """Lines inside functions that load one of ``names``, or a module-level name built
    from one of them (followed transitively)."""
    tree = ast.parse(source)
    names_set = set(names)
    changed = True
    while changed:  # module-level names derived from the changed ones
        changed = False
        for stmt in tree.body:
            if isinstance(stmt, ast.Assign | ast.AnnAssign) and stmt.value is not None:
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                loads = {n.id for n in ast.walk(stmt.value) if isinstance(n, ast.Name)}
                for t in targets:
                    if isinstance(t, ast.Name) and t.id not in names_set and loads & names_set:
                        names_set.add(t.id)
                        changed = True
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for sub in ast.walk(node):
                if isinstance(sub, ast.Name) and sub.id in names_set:
                    lines.add(sub.lineno)
                    # the statement that uses it, whole (a multi-line call)
    return lines


@dataclass
class Outcome:
    mutant: Mutant
    status: str  # killed, survived, timeout, no-load, error
    seconds: float
    tests_run: int
    output: str = ""


def run_targets(
    targets: list[Target],
    jobs: int,
    uncovered: str,
    show: str | None,
    keep: bool,
    only: set[str] | None = None,
) -> list[Outcome]:
    scratch = Path(tempfile.mkdtemp(prefix="mutation-"))
    trees = [scratch / f"w{i}" for i in range(jobs)]
    for tree in trees:
        copy_tree(tree)
    documented = _documented_ids()
    outcomes: list[Outcome] = []
    try:
        for target in targets:
            outcomes += _run_target(target, trees, uncovered, show, documented, only)
    finally:
        if not keep:
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            print(f"(scratch trees kept in {scratch})")
    return outcomes


def _run_target(
    target: Target,
    trees: list[Path],
    uncovered: str,
    show: str | None,
    documented: set[str],
    only: set[str] | None = None,
) -> list[Outcome]:
    t_start = time.monotonic()
    source = (ROOT / target.path).read_text()
    mutants = find_mutants(target)
    if only is not None:
        mutants = [m for m in mutants if m.id in only]
    if show is not None:
        mutants = [m for m in mutants if m.id == show]
        if not mutants:
            return []
    workers = [Worker(tree, list(target.tests)) for tree in trees]
    try:
        # Baseline: the unmutated tests pass, and which lines each one executes.
        trace_file = str(trees[0] / f"trace-{target.name}.json")
        workers[0].send(
            {
                "path": target.path,
                "tests": list(target.tests),
                "timeout": 1800,
                "trace_file": trace_file,
                "test_timeout": 300,
            }
        )
        base = workers[0].receive()
        cover = json.loads(Path(trace_file).read_text())
        if base["rc"] != 0 or cover["failed"]:
            raise SystemExit(
                f"{target.name}: the tests fail without any mutant ({cover['failed']}):\n"
                + base["output"][-5000:]
            )
        base_s = time.monotonic() - t_start
        print(
            f"== {target.name} ({target.path}): {len(mutants)} mutants; "
            f"baseline {len(cover['lines'])} tests, {base_s:.0f} s",
            flush=True,
        )
        queue = list(mutants)
        outcomes: list[Outcome] = []
        idle = list(workers)
        busy: dict[int, tuple[Worker, Mutant, int]] = {}
        import selectors

        sel = selectors.DefaultSelector()
        while queue or busy:
            while queue and idle:
                m = queue.pop(0)
                tests = _select(m, cover, source)
                if not tests:
                    if uncovered == "skip":
                        outcomes.append(Outcome(m, "survived", 0.0, 0, "no test executes it"))
                        continue
                    tests = sorted(cover["lines"], key=lambda t: cover["seconds"].get(t, 0.0))
                budget = sum(cover["seconds"].get(t, 1.0) for t in tests)
                w = idle.pop()
                w.send(
                    {
                        "path": target.path,
                        "source": m.apply(source.encode()).decode(),
                        "tests": tests,
                        "timeout": 30 + 4 * budget,
                        "test_timeout": int(
                            30 + 4 * max(cover["seconds"].get(t, 1) for t in tests)
                        ),
                        "want_output": show is not None,
                    }
                )
                assert w.proc.stdout is not None
                sel.register(w.proc.stdout, selectors.EVENT_READ, w)
                busy[id(w)] = (w, m, len(tests))
            for key, _ in sel.select():
                w = key.data
                sel.unregister(key.fileobj)
                result = w.receive()
                _, m, n = busy.pop(id(w))
                idle.append(w)
                rc = result["rc"]
                if result["timed_out"]:
                    status = "timeout"
                elif rc == 0:
                    status = "survived"
                elif rc == 1:
                    status = "killed"
                elif rc == 4:
                    status = "no-load"
                else:
                    status = "error"
                o = Outcome(m, status, result["seconds"], n, result["output"])
                outcomes.append(o)
                if status == "survived" or show is not None:
                    mark = " (documented)" if m.id in documented else ""
                    print(
                        f"  {status.upper()} {m.id}{mark} {m.path}:{m.line} {m.func} [{m.op}] "
                        f"{m.before!r} -> {m.after!r}",
                        flush=True,
                    )
                if status == "error":
                    print(f"  ERROR {m.id} rc={rc}: {result['output'][-800:]}", flush=True)
                if show is not None:
                    print(result["output"])
        _summary(target, outcomes, time.monotonic() - t_start)
        return outcomes
    finally:
        for w in workers:
            with contextlib.suppress(Exception):
                w.close()


def _summary(target: Target, outcomes: list[Outcome], seconds: float) -> None:
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    total = len(outcomes)
    survived = counts.get("survived", 0)
    rate = 100.0 * survived / total if total else 0.0
    detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    print(
        f"   {target.name}: {total} mutants: {detail}; survived {rate:.1f} %; {seconds:.0f} s",
        flush=True,
    )


def _documented_ids() -> set[str]:
    doc = ROOT / "docs" / "testing.md"
    if not doc.exists():
        return set()
    return set(re.findall(r"\bm-[0-9a-f]{8}\b", doc.read_text()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-t", "--target", action="append", help="target name (repeatable)")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="parallel workers (2)")
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    parser.add_argument("--show", metavar="ID", help="run one mutant, print its test output")
    parser.add_argument(
        "--uncovered",
        choices=["run", "skip"],
        default="run",
        help="mutants no test executes in-process: run the whole list (default) or count "
        "them as survivors",
    )
    parser.add_argument(
        "--tests", action="append", metavar="PATH", help="test files for the targets instead"
    )
    parser.add_argument(
        "--survivors-of",
        metavar="JSON",
        help="run only the mutants that survived in an earlier run's --json FILE (after "
        "tests were added: the others were killed already)",
    )
    parser.add_argument("--json", metavar="FILE", help="write every outcome to FILE")
    parser.add_argument("--keep", action="store_true", help="keep the scratch trees")
    parser.add_argument("--serve", metavar="TREE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(Path(args.serve))
        return
    names = {t.name for t in TARGETS}
    for name in args.target or []:
        if name not in names:
            parser.error(f"unknown target {name!r}; one of {', '.join(sorted(names))}")
    targets = [t for t in TARGETS if not args.target or t.name in args.target]
    if args.tests:
        targets = [dataclasses.replace(t, tests=tuple(args.tests)) for t in targets]
    if args.list:
        for t in targets:
            for m in find_mutants(t):
                print(f"{m.id} {m.path}:{m.line} {m.func} [{m.op}] {m.before!r} -> {m.after!r}")
        return
    if args.show:
        args.jobs = 1
    t0 = time.monotonic()
    only = None
    if args.survivors_of:
        earlier = json.loads(Path(args.survivors_of).read_text())
        only = {o["id"] for o in earlier if o["status"] == "survived"}
    outcomes = run_targets(targets, max(1, args.jobs), args.uncovered, args.show, args.keep, only)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                [{**asdict(o.mutant), "status": o.status, "seconds": o.seconds} for o in outcomes],
                indent=1,
            )
        )
    total = len(outcomes)
    survived = [o for o in outcomes if o.status == "survived"]
    documented = _documented_ids()
    undocumented = [o for o in survived if o.mutant.id not in documented]
    print(
        f"\nall targets: {total} mutants, {len(survived)} survived "
        f"({100.0 * len(survived) / max(1, total):.1f} %), {len(undocumented)} of them not "
        f"in docs/testing.md; {time.monotonic() - t0:.0f} s"
    )


if __name__ == "__main__":
    main()

"""The rules file (``--coerce rules.yaml``): read and checked whole, with line numbers.

    rules:
      - name: new-patient-ids           # optional; named in the report and in errors
        map: patients.csv               # a mapping table, relative to this file
        match: [PatientID, IssuerOfPatientID]
        missing: fail                   # value not in the table: keep | fail | skip
      - set: InstitutionName
        value: New Hospital
        when: {Modality: [CT, MR]}      # only then (every condition must hold)
      - regex: StudyDescription
        pattern: '^CT (.*)$'
        replacement: 'CT-\\1'
      - prefix: AccessionNumber
        value: 'A-'
      - delete: OtherPatientIDsSequence[*].IssuerOfPatientID

Operations: ``set`` / ``replace`` (``old``, ``new``) / ``prefix`` / ``suffix`` / ``delete`` /
``copy`` (``to``) / ``regex`` (``pattern``, ``replacement``) / ``map``. Rules apply in order,
each seeing what the ones above it changed. Scalars are read as written (``value: 0012`` is
the text "0012"): YAML's own typing would turn IDs into numbers.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

from migrator.coerce.paths import ElementPath, parse_path
from migrator.coerce.tables import Table, TableError, load_table
from migrator.coerce.vr import TEXT_VRS, ValueProblem, check
from migrator.errors import ConfigError

OPERATIONS = ("set", "replace", "prefix", "suffix", "delete", "copy", "regex", "map")
#: Keys each operation takes besides its own, ``name``, ``when`` and ``allow_uid``
_FIELDS = {
    "set": ("value",),
    "replace": ("old", "new"),
    "prefix": ("value",),
    "suffix": ("value",),
    "delete": (),
    "copy": ("to",),
    "regex": ("pattern", "replacement"),
    "map": ("match", "missing"),
}
_OPTIONAL = {"missing"}
MISSING_POLICIES = ("keep", "fail", "skip")
SPECIFIC_CHARACTER_SET = 0x00080005
SOP_CLASS_UID = 0x00080016


@dataclass(frozen=True, slots=True)
class Condition:
    path: ElementPath
    #: Any of these values (None: the element is absent or empty)
    values: tuple[str, ...] | None
    pattern: re.Pattern[str] | None = None


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    line: int
    op: str
    #: The element written (copy: ``to``); for ``map`` unused (the table names them)
    target: ElementPath | None = None
    source: ElementPath | None = None
    value: str = ""
    old: str = ""
    pattern: re.Pattern[str] | None = None
    table: Table | None = None
    missing: str = "fail"
    when: tuple[Condition, ...] = ()


@dataclass(frozen=True, slots=True)
class RuleSet:
    path: str
    rules: tuple[Rule, ...]
    #: sha256 of the rules file and its tables: every sender checks it has the same rules
    digest: str
    #: The highest top-level tag any rule reads or writes: the header region ends after it
    stop_after: int


class RulesError(ConfigError):
    """A rules file or table that cannot be used (the message names file and line)."""


def load_rules(path: str) -> RuleSet:
    """Read and check ``path`` and its tables. Raises ``RulesError``."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(f"--coerce {path}: cannot read: {exc}") from None
    digest = hashlib.sha256(text.encode())
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise RulesError(f"{path}: {where}not valid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise RulesError(f"{path}: not valid YAML: {exc}") from None
    reader = _Reader(path, digest)
    rules = reader.document(root)
    tags = {SPECIFIC_CHARACTER_SET}
    for rule in rules:
        for p in (rule.target, rule.source, *(c.path for c in rule.when)):
            if p is not None:
                tags.add(p.top)
        if rule.table is not None:
            tags.update(p.top for p in (*rule.table.match, *rule.table.write))
    ruleset = RuleSet(os.path.abspath(path), tuple(rules), digest.hexdigest(), max(tags))
    CHECKED[(ruleset.path, ruleset.digest)] = ruleset
    return ruleset


#: Rules this process has checked, by (absolute path, digest): `store` sends with the rules
#: its command checked instead of reading (and importing PyYAML for) them a second time.
CHECKED: dict[tuple[str, str], RuleSet] = {}


class _Reader:
    def __init__(self, path: str, digest: hashlib._Hash) -> None:
        self.path = path
        self.digest = digest
        self.base = os.path.dirname(os.path.abspath(path))

    def error(self, node: object, message: str) -> RulesError:
        line = getattr(getattr(node, "start_mark", None), "line", None)
        where = f"line {line + 1}: " if line is not None else ""
        return RulesError(f"{self.path}: {where}{message}")

    def document(self, root: object) -> list[Rule]:
        import yaml

        if not isinstance(root, yaml.MappingNode):
            raise self.error(root, "expected a mapping with a 'rules' list")
        top = self.mapping(root)
        for key, (knode, vnode) in top.items():
            if key == "version":
                if self.scalar(vnode) != "1":
                    raise self.error(vnode, "only version 1 is known")
            elif key != "rules":
                raise self.error(knode, f"unknown key {key!r} (expected 'rules', 'version')")
        if "rules" not in top:
            raise self.error(root, "no 'rules' list")
        seq = top["rules"][1]
        if not isinstance(seq, yaml.SequenceNode) or not seq.value:
            raise self.error(seq, "'rules' must be a non-empty list")
        rules = [self.rule(n, i + 1) for i, n in enumerate(seq.value)]
        names = [r.name for r in rules]
        for rule in rules:
            if names.count(rule.name) > 1:
                raise RulesError(f"{self.path}: line {rule.line}: rule name {rule.name!r} twice")
        return rules

    def mapping(self, node: object) -> dict[str, tuple[object, object]]:
        import yaml

        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, "expected a mapping (key: value)")
        out: dict[str, tuple[object, object]] = {}
        for knode, vnode in node.value:
            key = self.scalar(knode)
            if key in out:
                raise self.error(knode, f"{key!r} given twice")
            out[key] = (knode, vnode)
        return out

    def scalar(self, node: object) -> str:
        import yaml

        if not isinstance(node, yaml.ScalarNode):
            raise self.error(node, "expected a single value")
        return str(node.value)

    def path_of(self, node: object) -> ElementPath:
        try:
            return parse_path(self.scalar(node))
        except ValueError as exc:
            raise self.error(node, str(exc)) from None

    def rule(self, node: object, number: int) -> Rule:
        fields = self.mapping(node)
        line = getattr(getattr(node, "start_mark", None), "line", 0) + 1
        ops = [k for k in fields if k in OPERATIONS]
        if len(ops) != 1:
            raise self.error(node, f"a rule has one operation of {', '.join(OPERATIONS)}")
        op = ops[0]
        allowed = {op, "name", "when", "allow_uid", *_FIELDS[op]}
        for key, (knode, _) in fields.items():
            if key not in allowed:
                expected = ", ".join(sorted(allowed - {op}))
                raise self.error(knode, f"{op}: unknown key {key!r} (expected {expected})")
        for key in _FIELDS[op]:
            if key not in fields and key not in _OPTIONAL:
                raise self.error(node, f"{op} needs '{key}'")
        name = self.scalar(fields["name"][1]) if "name" in fields else f"rule {number}"
        allow_uid = "allow_uid" in fields and self.scalar(fields["allow_uid"][1]) == "true"
        when = self.conditions(fields["when"][1]) if "when" in fields else ()

        def text(key: str) -> str:
            return self.scalar(fields[key][1])

        opnode = fields[op][1]
        if op == "map":
            return self.map_rule(fields, name, line, when)
        target = self.path_of(opnode)
        source = None
        if op == "copy":
            source, target = target, self.path_of(fields["to"][1])
        self.check_target(opnode if op != "copy" else fields["to"][1], op, target, allow_uid)
        pattern = None
        if op == "regex":
            try:
                pattern = re.compile(text("pattern"))
            except re.error as exc:
                raise self.error(fields["pattern"][1], f"not a valid regex: {exc}") from None
        value = {
            "set": "value",
            "prefix": "value",
            "suffix": "value",
            "replace": "new",
            "regex": "replacement",
        }.get(op)
        rule = Rule(
            name,
            line,
            op,
            target=target,
            source=source,
            value=text(value) if value else "",
            old=text("old") if op == "replace" else "",
            pattern=pattern,
            when=when,
        )
        if op in ("set", "replace"):
            try:
                check(rule.value, target.vr)
            except ValueProblem as exc:
                raise self.error(fields[value or op][1], f"{target.text}: {exc}") from None
        return rule

    def check_target(self, node: object, op: str, target: ElementPath, allow_uid: bool) -> None:
        if target.tag == SOP_CLASS_UID and not target.nested:
            raise self.error(
                node,
                "SOP Class UID cannot be coerced (the association is "
                "negotiated for the file's own)",
            )
        if target.tag == SPECIFIC_CHARACTER_SET:
            raise self.error(
                node,
                "Specific Character Set cannot be coerced (values are encoded in the file's own)",
            )
        if op != "delete" and target.vr not in TEXT_VRS:
            raise self.error(
                node,
                f"{target.text} has VR {target.vr}: only text VRs are "
                "written (delete works on any element)",
            )
        if target.vr == "UI" and not allow_uid:
            raise self.error(
                node,
                f"{target.text} is a UID: add 'allow_uid: true' to the "
                "rule if it is meant to change",
            )

    def map_rule(
        self,
        fields: dict[str, tuple[object, object]],
        name: str,
        line: int,
        when: tuple[Condition, ...],
    ) -> Rule:
        import yaml

        tnode = fields["map"][1]
        table_path = os.path.join(self.base, self.scalar(tnode))
        mnode = fields["match"][1]
        if isinstance(mnode, yaml.SequenceNode):
            match = [self.scalar(n) for n in mnode.value]
        else:
            match = [self.scalar(mnode)]
        missing = self.scalar(fields["missing"][1]) if "missing" in fields else "fail"
        if missing not in MISSING_POLICIES:
            raise self.error(fields["missing"][1], f"missing: one of {', '.join(MISSING_POLICIES)}")
        try:
            with open(table_path, encoding="utf-8-sig", newline="") as f:
                content = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise self.error(tnode, f"table {table_path}: cannot read: {exc}") from None
        self.digest.update(content.encode())
        try:
            table = load_table(table_path, content, match)
        except TableError as exc:
            raise RulesError(f"{self.path}: line {line}: rule {name}: {exc}") from None
        for p in table.write:
            allow_uid = "allow_uid" in fields and self.scalar(fields["allow_uid"][1]) == "true"
            if p.vr == "UI" and not allow_uid:
                raise self.error(tnode, f"{p.text} is a UID: add 'allow_uid: true'")
            if p.tag == SPECIFIC_CHARACTER_SET:
                raise self.error(tnode, "Specific Character Set cannot be coerced")
        return Rule(name, line, "map", table=table, missing=missing, when=when)

    def conditions(self, node: object) -> tuple[Condition, ...]:
        import yaml

        out = []
        for key, (knode, vnode) in self.mapping(node).items():
            path = self.path_of(knode)
            if isinstance(vnode, yaml.ScalarNode) and vnode.tag.endswith(":null"):
                out.append(Condition(path, None))
            elif isinstance(vnode, yaml.SequenceNode):
                out.append(Condition(path, tuple(self.scalar(n) for n in vnode.value)))
            elif isinstance(vnode, yaml.MappingNode):
                sub = self.mapping(vnode)
                if set(sub) != {"matches"}:
                    raise self.error(
                        vnode, f"{key}: a condition is a value, a list, null or {{matches: regex}}"
                    )
                try:
                    pattern = re.compile(self.scalar(sub["matches"][1]))
                except re.error as exc:
                    raise self.error(vnode, f"not a valid regex: {exc}") from None
                out.append(Condition(path, (), pattern))
            else:
                out.append(Condition(path, (self.scalar(vnode),)))
        return tuple(out)

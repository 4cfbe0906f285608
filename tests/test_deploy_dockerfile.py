"""The Dockerfile, read with BuildKit's own parser (the `dockerfile` package): one multi-stage
image, slim base, non-root, no build tools in the final stage, `migrator` as an exec-form
entrypoint; and a build context (.dockerignore) that holds what the COPY lines need and
nothing private. No Docker engine here, so the image itself is not built.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from tests.test_deploy_support import ROOT, ImageDefaults

BUILD_TOOLS = ("build-essential", "gcc", "g++", "make ", "apt-get install", "pip install")


def test_multi_stage_slim_non_root_image() -> None:
    image = ImageDefaults()
    assert len(image.stages) >= 2, "a build stage and a runtime stage"
    args = {
        c.value[0].split("=", 1)[0]: c.value[0].split("=", 1)[1]
        for c in image.commands
        if c.cmd == "ARG" and "=" in c.value[0]
    }
    for stage in image.stages:
        base = stage[0].value[0]
        for name, value in args.items():
            base = base.replace("${" + name + "}", value)
        assert "slim" in base, f"not a slim base: {base}"
    final = image.stages[-1]
    users = [c.value[0] for c in final if c.cmd == "USER"]
    assert users, "the final stage sets no USER (it would run as root)"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, users  # numeric: runAsNonRoot can verify it
    for c in final:
        if c.cmd == "RUN":
            text = " ".join(c.value)
            assert not any(t in text for t in BUILD_TOOLS), f"final stage builds: {text}"
        if c.cmd == "COPY":
            assert any(f.startswith("--from=") for f in c.flags), (
                f"the final stage copies only built artefacts: {c.original}"
            )
    build_runs = " ".join(" ".join(c.value) for c in image.stages[0] if c.cmd == "RUN")
    assert "build-essential" in build_runs  # compilers exist, but only in the build stage


def test_entrypoint_is_migrator_in_exec_form() -> None:
    image = ImageDefaults()
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert image.entrypoint == ["migrator"] and "migrator" in scripts
    assert image.cmd == ["--help"]
    # No init or shell in front of it: `migrator worker` execs Celery, which is then PID 1.
    final = image.stages[-1]
    assert not [c for c in final if c.cmd in ("ENTRYPOINT", "CMD") and not c.json]
    assert "/opt/migrator/bin" in image.env["PATH"].split(":")[0]
    assert image.env["PYTHONDONTWRITEBYTECODE"] == "1"  # read-only root at run time


def _dockerignore() -> list[tuple[bool, str]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        rules.append((negate, line.lstrip("!").rstrip("/")))
    return rules


def _regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus ``**``) as a regular expression."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _in_context(path: str, rules: list[tuple[bool, str]]) -> bool:
    """Docker's rule: the last pattern matching the path, or a folder above it, decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    included = True
    for negate, pattern in rules:
        if any(_regex(pattern).fullmatch(c) for c in candidates):
            included = negate
    return included


def test_build_context_holds_what_copy_needs_and_nothing_private() -> None:
    image = ImageDefaults()
    rules = _dockerignore()
    sources: list[str] = []
    for c in image.commands:
        if c.cmd == "COPY" and not any(f.startswith("--from=") for f in c.flags):
            sources += list(c.value[:-1])
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: no such file"
        files = [p for p in (ROOT / src).rglob("*.py")] if (ROOT / src).is_dir() else [ROOT / src]
        for f in files:
            rel = str(f.relative_to(ROOT))
            if "__pycache__" not in rel:
                assert _in_context(rel, rules), f"{rel} is needed but .dockerignore drops it"
    for private in (
        ".git/config",
        ".venv/bin/python",
        "tests/conftest.py",
        "compose/.env",
        "migrator/__pycache__/cli.cpython-311.pyc",
        "bench/README.md",
    ):
        assert not _in_context(private, rules), f"{private} would be sent to the builder"


def test_seed_script_is_in_the_image() -> None:
    image = ImageDefaults()
    assert image.files["/opt/migrator/demo/seed_s3.py"] == ROOT / "compose" / "seed" / "seed_s3.py"
    assert Path(image.files["/opt/migrator/demo/seed_s3.py"]).is_file()

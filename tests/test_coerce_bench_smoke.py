"""Smoke test of bench/coerce_bench.py: a tiny real run against storescp (issue 18)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(120)
def test_coerce_bench_smoke(tmp_path: Path) -> None:
    """20 tiny and 4 small files, unchanged and coerced: every run sent every file, the
    proof run found every file coerced, the ratio and the goals are printed."""
    out = tmp_path / "coerce.json"
    cmd = [sys.executable, str(REPO / "bench" / "coerce_bench.py"), "--corpus", "tiny:20"]
    cmd += ["--corpus", "small:4", "--repeat", "1", "--json", str(out), "--timeout", "40"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=110, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    rows = {(r["corpus"], r["mode"]): r for r in data["rows"]}
    assert set(rows) == {(c, m) for c in ("tiny", "small") for m in ("unchanged", "coerced")}
    assert all(r["files_per_s"] and not r["failures"] for r in rows.values()), rows
    assert "proof: every one of 20 files coerced" in proc.stderr + proc.stdout
    assert [g[0] for g in data["goals"]] == [
        "tiny: coerced ≥ 0.8× unchanged",
        "small: coerced ≥ 0.8× unchanged",
    ]
    assert "goal (issue 18)" in proc.stdout

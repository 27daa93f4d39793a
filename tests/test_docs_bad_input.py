"""docs/bad_input.md: every row names a test, and every named test exists."""

import re

from conftest import ROOT

PREFIX = {"S": "tests/test_reliability_search.py", "D": "tests/test_reliability_det.py"}


def _rows() -> list[str]:
    lines = (ROOT / "docs" / "bad_input.md").read_text().splitlines()
    table = [line for line in lines if line.startswith("| ")]
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table]
    return [row[-1] for row in cells if row[-1].lower() not in ("test",) and not set(row[-1]) <= set("-")]


def test_every_bad_input_row_names_an_existing_test():
    """A row's last cell is `file::test`, `S|D test`, or "same" (the row above's test)."""
    rows, checked, last_file = _rows(), 0, None
    assert len(rows) >= 60
    for cell in rows:
        if "same" in cell and "`" not in cell:
            continue
        before = checked
        path = next((PREFIX[k] for k in PREFIX if cell.startswith(k + " ")), None)
        for ref in re.findall(r"`([^`]+)`", cell):
            file, _, name = ref.rpartition("::") if "::" in ref else (path, "", ref)
            file = file or last_file
            last_file = file
            assert file, f"row cites {ref!r} without a file"
            source = (ROOT / file).read_text()
            func = re.escape(name.split("[")[0])
            assert re.search(rf"^def {func}\(", source, re.M), f"{file}::{name} missing"
            checked += 1
        assert checked > before, f"row without a test: {cell!r}"
    assert checked >= 40

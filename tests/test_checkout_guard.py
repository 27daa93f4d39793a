"""The guard in conftest.py that fails the run when a test leaves files in the checkout."""

from conftest import checkout_changes, checkout_files


def test_guard_sees_new_changed_and_removed_files_but_not_caches(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "a.yaml").write_text("A: 1\n")
    (tmp_path / "README.md").write_text("x")
    before = checkout_files(tmp_path)
    assert set(before) == {"configs/", "configs/a.yaml", "README.md"}
    (tmp_path / "datasets" / "nasnet_shapes").mkdir(parents=True)  # gitignored, still counted
    (tmp_path / "datasets" / "nasnet_shapes" / "000000.jpg").write_bytes(b"jpeg")
    (tmp_path / "configs" / "a.yaml").write_text("A: 22\n")
    (tmp_path / "README.md").unlink()
    for cache in ("__pycache__", ".pytest_cache", ".ruff_cache", ".venv"):
        (tmp_path / "configs" / cache).mkdir()
        (tmp_path / "configs" / cache / "f").write_text("cached")
    assert checkout_changes(before, checkout_files(tmp_path)) == [
        "+ datasets/", "+ datasets/nasnet_shapes/", "+ datasets/nasnet_shapes/000000.jpg",
        "- README.md", "~ configs/a.yaml"]

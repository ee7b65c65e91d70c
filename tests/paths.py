"""Where the repository is, for tests that read its files (one place, any depth)."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

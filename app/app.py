"""Sample Aurora dashboard: what the default image serves when no real app is set.

It shows which product directories exist and how fresh they are, so a booted
image has a real Panel page behind nginx without the private dashboard repo.
"""

import os
import time
from pathlib import Path

import panel as pn

pn.extension()

PRODUCT_ROOT = Path(os.environ.get("AURORA_PRODUCT_ROOT", "/data/aurora/products"))


def product_rows() -> list[dict[str, str]]:
    rows = []
    if PRODUCT_ROOT.is_dir():
        for path in sorted(p for p in PRODUCT_ROOT.iterdir() if p.is_dir()):
            age = time.time() - path.stat().st_mtime
            rows.append({"product": path.name, "updated": f"{age / 60:.0f} min ago"})
    return rows


def status() -> pn.pane.Markdown:
    rows = product_rows()
    lines = [f"- **{r['product']}**: {r['updated']}" for r in rows] or ["- no products yet"]
    return pn.pane.Markdown("\n".join(lines))


# A staging copy says so on every page (AURORA_BANNER from the spec's environment).
BANNER = os.environ.get("AURORA_BANNER", "")

pn.Column(
    *([pn.pane.Alert(BANNER, alert_type="warning")] if BANNER else []),
    "# Aurora cloud dashboard",
    f"Products under `{PRODUCT_ROOT}`:",
    status,
).servable(title="Aurora cloud dashboard")

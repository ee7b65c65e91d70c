"""Sample Aurora dashboard: what the default image serves when no real app is set.

It shows the products the deployment's environment names (the production
app's variables from /etc/aurora-dashboard.env: CEILOMETER_ZARR_PATH,
WXCAM_CATALOG_PATH, *_LATEST_IMAGE, ...) and how fresh they are, so a booted
image has a real Panel page behind nginx without the private dashboard repo.
"""

import os
import time
from pathlib import Path

import panel as pn

pn.extension()

# The production app's names for its products; a suffix says what the path is.
PRODUCT_SUFFIXES = ("_ZARR_PATH", "_CATALOG_PATH", "_LATEST_IMAGE")


def products() -> dict[str, Path]:
    """Product name -> path, from the environment the image's env file sets."""
    return {
        key: Path(value)
        for key, value in sorted(os.environ.items())
        if key.endswith(PRODUCT_SUFFIXES) and value.startswith("/")
    }


def product_rows() -> list[dict[str, str]]:
    rows = []
    for key, path in products().items():
        if path.exists():
            age = time.time() - path.stat().st_mtime
            rows.append({"product": key, "updated": f"{age / 60:.0f} min ago"})
        else:
            rows.append({"product": key, "updated": "not yet made"})
    return rows


def status() -> pn.pane.Markdown:
    rows = product_rows()
    lines = [f"- **{r['product']}**: {r['updated']}" for r in rows] or ["- no products configured"]
    return pn.pane.Markdown("\n".join(lines))


pn.Column(
    "# Aurora cloud dashboard",
    "Products named in `/etc/aurora-dashboard.env`:",
    status,
).servable(title="Aurora cloud dashboard")

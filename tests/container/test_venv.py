"""The dashboard's venv as the image carries it, after mkosi.postinst.d/slim.chroot
dropped what only building, testing or documenting the packages reads: every
package the lock installs still imports in the image's own Python, and so do the
SciPy modules that import numpy.testing (which reads numpy._core.tests._natype: an
earlier slim removed every `tests` directory and with it scipy.stats, .linalg,
.signal, ... and matplotlib's pylab)."""

from __future__ import annotations

import json

from builder.image.root import Container
from builder.spec.model import HostSpec

# Each distribution's top-level import names, from its metadata, then each imported.
IMPORT_ALL = """
import importlib, importlib.metadata as md, json
names = set()
for dist in md.distributions():
    top = dist.read_text("top_level.txt")
    if top:
        names.update(n for n in top.split() if not n.startswith("_"))
        continue
    for f in dist.files or ():
        if len(f.parts) == 2 and f.parts[1] == "__init__.py" and "." not in f.parts[0]:
            names.add(f.parts[0])
extra = [n for n in ("numpy.testing", "scipy.stats", "scipy.linalg", "scipy.signal",
                     "scipy.ndimage", "scipy.interpolate") if n.split(".")[0] in names]
failed = {}
for name in sorted(names) + extra:
    try:
        importlib.import_module(name)
    except Exception as e:
        failed[name] = repr(e)
print(json.dumps({"imported": sorted(names), "failed": failed}))
"""


def test_every_locked_package_imports(container: Container, spec: HostSpec) -> None:
    python = f"{spec.dashboard.venv}/bin/python"
    out = container.succeed(
        [python, "-B", "-W", "ignore", "-c", IMPORT_ALL],
        env={"HOME": "/tmp", "MPLCONFIGDIR": "/tmp"},
        timeout=600,
    )
    found = json.loads(out.splitlines()[-1])
    assert found["failed"] == {}, found["failed"]
    assert {"panel", "numpy"} <= set(found["imported"]), found["imported"]

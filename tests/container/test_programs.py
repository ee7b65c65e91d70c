"""The on-host programs in the image (its Python, its rendered configs), run as their
units run them, on a host whose data volume is missing: each refuses in one line,
exit status non-zero, and writes nothing where the volume belongs (the raw mirror
and the GWS backup are never touched on a guess). With peers to talk to, the same
programs are exercised in tests/unit/programs (source tree) and tests/vm/test_flows."""

from __future__ import annotations

import shlex

import pytest

from builder.image.root import Container
from builder.render.names import gws_unit, sync_unit
from builder.spec.model import HostSpec, load_spec
from tests.container.conftest import SPEC, unit_directives

_spec = load_spec(SPEC)
UNITS = [
    *(sync_unit(stream) for stream in _spec.source_sync.streams),
    *(gws_unit(job) for job in _spec.gws.jobs),
    "aurora-mirror-verify",
]


@pytest.mark.parametrize("unit", UNITS)
def test_refuses_in_one_line_without_the_data_volume(
    container: Container, spec: HostSpec, unit: str
) -> None:
    service = unit_directives(container, f"{unit}.service")
    assert len(service["ExecStart"]) == 1, service["ExecStart"]
    user = service.get("User", ["root"])[-1]
    command = service["ExecStart"][0].lstrip("-@:+!")
    env = " ".join(shlex.quote(e) for e in service.get("Environment", []))
    done = container.run(
        f"runuser -u {user} -- env {env} {command}; echo status=$?; "
        f"find {' '.join(m.where for m in spec.mounts)} -mindepth 1 | head",
        timeout=120,
    )
    out, err = done.stdout.splitlines(), done.stderr
    status = next(line for line in out if line.startswith("status="))
    assert status != "status=0", (unit, done.stdout, err)
    assert "Traceback" not in err, err
    said = [line for line in err.splitlines() if line.startswith("aurora-")]
    assert len(said) == 1, err
    assert out[out.index(status) + 1 :] == [], f"{unit} wrote onto the missing volumes: {out}"

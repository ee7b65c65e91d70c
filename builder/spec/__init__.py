"""The host spec: load, validate and explain what an operator declares.

Where each part lives:

- ``model``           ``HostSpec`` and ``load_spec``; ``spec.source`` resolves every file
                      the spec names, once, at load (``SpecSource``)
- ``host``, ``flows``, ``deploy``   the sections: the machine; the data flows; release targets
- ``validators``      what each value may be: one table of string classes (CHARSETS)
- ``systemd_values``  systemd time spans and calendar events, checked in Python
- ``yaml_lines``      YAML that remembers the line of every value (errors name file:line)
- ``errors``          every mistake of a spec as one line (``validate --json``)
- ``credcheck``       secrets refused as values; ``aurora-image secrets check``
- ``reference``, ``schema``   docs/reference/spec.md and the editor's JSON Schema
"""

"""Render: a spec becomes the file tree the image carries.

Where each part lives:

- ``carried``    THE table of every file the image gets from this project: kind,
                 producer, spec keys (``carried_reference`` makes docs/reference/carried.md)
- ``engine``     ``render(spec)``: walks the table, records each file's provenance
- ``produce``    what each rendered row makes from the spec (templates in units/)
- ``configs``    the JSON configs the on-host programs read
- ``layout``     the storage layout (tmpfiles) and who may write where
- ``names``      image paths and unit names the programs and units agree on
- ``unitfile``   which names are units; parsing a unit file
- ``tree``       ``File``, provenance, writing a tree atomically
- ``explain``, ``diff``   ``aurora-image explain`` and ``render --diff``
"""

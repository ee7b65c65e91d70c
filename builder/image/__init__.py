"""Images: inputs and tag, the mkosi build, the store of built images.

Where each part lives:

- ``inputs``     every input of an image and the tag derived from it (BUILDER_INPUTS)
- ``build``      render, stage the app, run mkosi, write the manifest, store the image
- ``mkosi``      the one adapter around mkosi; ``uki``, ``gpt`` read what it made
- ``tools_tree`` the programs mkosi runs: the build's own minimal trixie tools tree
- ``debian``     where apt takes packages from (the locked repository, ``debrepo``, made
                 from the .deb store, ``debstore``, which ``debfetch`` fills on a fresh
                 machine) and the Debian lock (``debian_lock``)
- ``app_lock``   the dashboard's Python lock
- ``store``      THE owner of ``images/<tag>/``: names, listing, newest, resolve, partials;
                 ``manifest``: the typed Manifest and Attestation it reads and writes
- ``sizes``, ``logs``, ``diff``, ``verify``, ``prune``   what a stored image is made of,
                 its logs, what changed between two, a bit-for-bit rebuild, what may go
- ``root``       an image's tree mounted read-only as its host sees it (``image_root``),
                 and its programs run in it under systemd-nspawn (tests/container)
"""

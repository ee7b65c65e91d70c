"""Releases on JASMIN Cloud: promote a tested image to Glance and Nova, roll back, list, prune.

A release: refuse an image the smoke suite has not passed, convert it to
compressed qcow2, upload it to Glance as `aurora-<tag>`, rebuild the Nova
server from it (root disk replaced, volumes and addresses kept), probe it; a
failed rebuild or probe goes back to the image the server ran before. Where
each part lives, in the order a promote uses them:

  cloud      the OpenStack adapter (Glance images, one Nova server)
  glance     our images in Glance: names, readiness, the image live before
  errors     refused (exit 1), rolled back healthy (exit 3), broken (exit 4)
  target     what a release aims at (Target) and reports (Attempt, Outcome)
  convert    attested-image check, qcow2 conversion (cached), upload properties
  upload     upload plan and its safe execution (uploading -> ready)
  meta       the release metadata image that travels with an upload
  history    deployment events on the Glance image; `releases`
  probing    the probe of a rebuilt server (address, host keys, manifest)
  deploy     rebuild, probe, automatic rollback
  promote    plan_promote / plan_rollback and execute
  preview    `--dry-run`: the plan as steps
  prune      `glance-prune`
  gates, policy, categories, signing, lease, soak, evidence
             what must hold around a release, and what it leaves on record
  live       an image's manifest and rendered files from any clone
  overlay    proof that staging differs from production only in its overlay
  status     what is live where (`aurora-image status`)

Printing is the CLI's (builder.cli.release): these modules return values and
tell the operator only through `Target.note`.
"""

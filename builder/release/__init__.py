"""Releases on JASMIN Cloud: Glance, Nova, gates, promote, rollback."""

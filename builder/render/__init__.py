"""Render: a spec becomes the file tree the image carries."""

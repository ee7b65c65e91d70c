"""The host spec: load, validate and explain what an operator declares."""

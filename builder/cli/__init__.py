"""The `aurora-image` command: parser, completion, command reference."""

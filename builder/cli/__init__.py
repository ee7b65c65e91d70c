"""The `aurora-image` command.

commands.py is the one table of commands and options; the parser (commands),
the bash completion (completion) and docs/reference/commands.md (reference) are
made from it. Handlers, by kind: main (entry point; spec, render and image
store), ops (vm, ssh, audit, explain), status (status, logs), release (promote,
rollback, releases, glance-prune, secrets), gates (release gates, sign),
debstore. A handler parses nothing itself: it takes the parsed arguments,
calls the modules that do the work, prints, and returns the exit status
(builder.errors names them).
"""

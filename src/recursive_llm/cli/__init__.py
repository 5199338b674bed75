"""The `rlm` command: options declared once, the subcommands, batch runs and progress."""

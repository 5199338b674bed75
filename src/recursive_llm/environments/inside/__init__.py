"""What runs inside the worker process: its main loop, the REPL runtime, helpers, confinement."""

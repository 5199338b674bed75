"""The host's side of a worker: the process, its channel, its directory and the isolation plan."""

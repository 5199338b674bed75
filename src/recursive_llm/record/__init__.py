"""What a run leaves behind: the store of runs and calls, events, export and the viewer."""

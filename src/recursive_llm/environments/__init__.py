"""Where model-written code runs: an isolated worker process per run (the default), or in-process.

The interface every environment implements is `base.Environment`; `factory.make_environment`
chooses one for a run. The worker imports this package at every start: it imports nothing.
"""

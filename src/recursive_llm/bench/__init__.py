"""Benchmarks: task families with exact ground truth, the methods compared, a model simulator,
and the runner behind `rlm bench` (results.jsonl, report.md, PNG plots)."""

"""Do the tests notice when a guard is weakened? Mutation testing of the checks that protect users.

Each mutation below is one small, plausible weakening of a security or money check (a string prefix
for a path test, a prefix of the bearer token, a retried 400, a sandbox layer switched off behind
another). The script copies this checkout to a temporary directory, applies the mutations one at a
time there (the checkout itself is never touched), runs the tests named for each, and reports
whether they noticed (`caught`: a test failed) or not (`SURVIVED`; `SKIPPED` when its tests were
skipped on this machine, e.g. the full-disk test without root). Issue 32.

    python benchmarks/guard_mutations.py            # every mutation
    python benchmarks/guard_mutations.py token retry  # those whose name contains a word
    python benchmarks/guard_mutations.py --list

A new guard gets a line in MUTATIONS: (name, file under src/recursive_llm, old text, new text,
tests). Every occurrence of the old text in the file is replaced; a mutation whose old text is
missing (the code moved) or whose result does not compile stops the script before anything runs.
Before the mutations, the named tests run once unmutated and must pass. Exit status: 0 when every
mutation was caught, 1 when one survived or its tests were skipped or could not run, 2 for a
broken definition.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple, NoReturn

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "src/recursive_llm"
G = "tests/test_guards.py::"


class Mutation(NamedTuple):
    name: str
    file: str  # under src/recursive_llm
    old: str
    new: str
    tests: tuple[str, ...]  # pytest node ids, relative to the checkout


MUTATIONS = [
    # -- paths under an allowed root (issue 32, item 1) --
    Mutation("root-as-string-prefix", "serving/paths.py", "root not in candidate.parents",
             "not str(candidate).startswith(str(root))",
             (G + "test_a_sibling_folder_named_like_the_root_is_outside_it[serve]",
              G + "test_a_sibling_folder_named_like_the_root_is_outside_it[mcp]",
              G + "test_the_server_refuses_a_sibling_folder_of_its_root")),
    # -- the bearer token (item 2) --
    Mutation("token-any-prefix", "serving/tokens.py", 'hmac.compare_digest(given, f"Bearer {token}".encode())',
             'len(given) > 7 and f"Bearer {token}".encode().startswith(given)',
             (G + "test_only_the_exact_token_opens_the_server",)),
    Mutation("token-extra-characters", "serving/tokens.py", 'hmac.compare_digest(given, f"Bearer {token}".encode())',
             'given.startswith(f"Bearer {token}".encode())', (G + "test_only_the_exact_token_opens_the_server",)),
    Mutation("token-any-case", "serving/tokens.py", 'hmac.compare_digest(given, f"Bearer {token}".encode())',
             'hmac.compare_digest(given.lower(), f"Bearer {token}".encode().lower())',
             (G + "test_only_the_exact_token_opens_the_server",)),
    # -- the run store (item 3) --
    Mutation("store-write-failures-silent", "record/store.py", 'self._failed(error, "written")', "pass",
             ("tests/test_store_faults.py::test_a_disk_that_fills_during_a_run_keeps_the_answer_and_says_so",)),
    # -- host bounds (item 4) --
    Mutation("host-batch-limit-x10", "engine/subcalls.py", "len(call.prompts) > HOST_BOUNDS.max_batch_prompts",
             "len(call.prompts) > 10 * HOST_BOUNDS.max_batch_prompts",
             (G + "test_the_hosts_batch_limit_holds_at_the_limit_and_one_past_it",)),
    Mutation("host-batch-limit-off-by-one", "engine/subcalls.py", "len(call.prompts) > HOST_BOUNDS.max_batch_prompts",
             "len(call.prompts) >= HOST_BOUNDS.max_batch_prompts",
             (G + "test_the_hosts_batch_limit_holds_at_the_limit_and_one_past_it",)),
    Mutation("repl-batch-limit-x10", "environments/inside/runtime.py", "len(prompts) > HOST_BOUNDS.max_batch_prompts",
             "len(prompts) > 10 * HOST_BOUNDS.max_batch_prompts",
             ("tests/test_host_bounds.py::test_a_huge_batch_is_refused_in_the_repl_before_it_reaches_the_host",)),
    Mutation("repl-batch-limit-off-by-one", "environments/inside/runtime.py", "len(prompts) > HOST_BOUNDS.max_batch_prompts",
             "len(prompts) >= HOST_BOUNDS.max_batch_prompts",
             (G + "test_the_hosts_batch_limit_holds_at_the_limit_and_one_past_it",)),
    # -- retries (items 5, 6, 9) --
    Mutation("retry-after-ignored", "engine/scheduler.py", "and error.retry_after is not None:", "and False:",
             (G + "test_retry_after_is_honoured_on_server_errors",)),
    Mutation("retry-after-read-only-on-429", "models/errors.py", "parse_retry_after(headers) if retryable else",
             "parse_retry_after(headers) if status == 429 else", (G + "test_retry_after_is_honoured_on_server_errors",)),
    Mutation("retry-400", "models/errors.py", "RETRYABLE_STATUS = {", "RETRYABLE_STATUS = {400, ",
             (G + "test_a_request_the_provider_refused_is_sent_exactly_once",)),
    Mutation("retry-422", "models/errors.py", "RETRYABLE_STATUS = {", "RETRYABLE_STATUS = {422, ",
             (G + "test_a_request_the_provider_refused_is_sent_exactly_once",)),
    Mutation("retry-every-4xx", "models/errors.py", "or status >= 500", "or status >= 400",
             (G + "test_a_request_the_provider_refused_is_sent_exactly_once",)),
    Mutation("retry-non-retryable-errors", "engine/scheduler.py", "if not error.retryable or attempt >", "if attempt >",
             (G + "test_only_retryable_errors_are_retried",)),
    # -- the sandbox's layers, each alone (item 7) --
    Mutation("landlock-no-tcp-rules", "environments/inside/confine.py", "handled_net = NET_BIND_TCP | NET_CONNECT_TCP if",
             "handled_net = 0 if", (G + "test_each_sandbox_layer_alone_stops_a_loopback_connection",)),
    Mutation("seccomp-allows-socket", "environments/inside/confine.py", '"socket": 41,', "",
             (G + "test_each_sandbox_layer_alone_stops_a_loopback_connection",)),
    # -- reply parsing (item 8) --
    Mutation("unclosed-reasoning-kept", "engine/parsing.py", r'\s*>|\Z)",', r'\s*>)",',
             (G + "test_an_unclosed_reasoning_block_hides_a_final_and_code_at_the_start_of_a_line",)),
    # -- guards the sample of issue 32 found guarded already: kept here so they stay so --
    Mutation("failed-sub-call-text-accepted", "engine/answers.py", "failure = mostly_failures(answer, failures)",
             "failure = None", ("tests/test_host_bounds.py::test_a_failed_sub_calls_error_text_is_never_the_answer",)),
    Mutation("nan-limits-accepted", "config.py", "if not math.isfinite(value):", "if False:",
             ("tests/test_budget.py::test_limits_refuse_non_finite_and_non_numbers",
              "tests/test_rlm.py::test_rlm_refuses_nan_limits")),
    Mutation("worker-gets-host-env", "environments/host/worker.py", "env = sandbox_env()",
             "env = {**os.environ, **sandbox_env()}",
             ("tests/test_attacks.py::test_attack_is_contained[env-process-started]",)),
    Mutation("cache-shared-between-clients", "engine/scheduler.py", 'getattr(self.store, "cache_namespace", None))', "None)",
             ("tests/test_server_hostile.py::test_the_call_cache_is_per_client",)),
]


class Outcome(NamedTuple):
    mutation: Mutation
    verdict: str  # caught, SURVIVED, SKIPPED (its tests could not run here), ERROR
    detail: str
    seconds: float


def broken(message: str) -> NoReturn:
    """A mutation's definition no longer fits the code: say which and stop (exit status 2)."""
    print(message, file=sys.stderr)
    raise SystemExit(2)


def mutated_text(mutation: Mutation) -> tuple[str, str]:
    """(original, mutated) text of the mutation's file; stops (`broken`) when the definition is."""
    path = REPO / PACKAGE / mutation.file
    if not path.is_file():
        broken(f"mutation {mutation.name}: {PACKAGE}/{mutation.file} does not exist (the code moved); "
                         f"update its line in {Path(__file__).name}")
    original = path.read_text(encoding="utf-8")
    if mutation.old not in original:
        broken(f"mutation {mutation.name}: its old text {mutation.old!r} is not in {PACKAGE}/{mutation.file} "
                         f"(the code moved or changed); update its line in {Path(__file__).name}")
    mutated = original.replace(mutation.old, mutation.new)
    if mutated == original:
        broken(f"mutation {mutation.name}: the new text is the old one")
    try:
        compile(mutated, str(path), "exec")
    except SyntaxError as error:
        broken(f"mutation {mutation.name}: the mutated {mutation.file} does not compile ({error}); a mutation "
               f"must change behaviour, not break the file")
    return original, mutated


def copy_checkout(into: Path) -> Path:
    """The checkout without .git and caches: the tests' conftest and pyproject point at its src."""
    ignore = shutil.ignore_patterns(".git", "__pycache__", "*.pyc", ".pytest_cache", "rlm-home", "bench-results",
                                    "*.egg-info", ".venv", "venv")
    shutil.copytree(REPO, into, ignore=ignore, symlinks=True)
    return into


SKIPPED = -2  # run_tests' code when the tests passed only because some were skipped: they judged nothing


def run_tests(copy: Path, tests: tuple[str, ...], timeout_s: float) -> tuple[int, str]:
    """(pytest's exit code, or SKIPPED; the names of the tests that failed, the skips' reasons, or
    pytest's last lines)."""
    for cache in (copy / "src").rglob("__pycache__"):  # a stale .pyc of another mutation must never run
        shutil.rmtree(cache, ignore_errors=True)
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-rfEs", "-p", "no:cacheprovider", *tests]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)  # the copy's conftest sets it to the copy's src
    try:
        done = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return -1, f"the tests ran over {timeout_s:.0f} s"
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", done.stdout, re.MULTILINE)
    skipped = re.findall(r"^SKIPPED \[\d+\] (.+)$", done.stdout, re.MULTILINE)
    if done.returncode == 0 and skipped:
        return SKIPPED, "skipped: " + "; ".join(skipped)
    tail = " | ".join(done.stdout.strip().splitlines()[-3:])
    return done.returncode, ", ".join(failed) or tail


def judge(copy: Path, mutation: Mutation, texts: tuple[str, str], timeout_s: float) -> Outcome:
    path = copy / PACKAGE / mutation.file
    original, mutated = texts
    started = time.monotonic()
    path.write_text(mutated, encoding="utf-8")
    try:
        code, detail = run_tests(copy, mutation.tests, timeout_s)
    finally:
        path.write_text(original, encoding="utf-8")
    verdict = {0: "SURVIVED", 1: "caught", SKIPPED: "SKIPPED"}.get(code, "ERROR")
    if verdict == "ERROR":
        detail = f"pytest exit code {code}: {detail}"
    return Outcome(mutation, verdict, detail, time.monotonic() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="only the mutations whose name contains one of these")
    parser.add_argument("--list", action="store_true", help="list the mutations and their tests, run nothing")
    parser.add_argument("--skip-baseline", action="store_true", help="do not run the tests unmutated first")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per pytest run (default 900)")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if not args.names or any(word in m.name for word in args.names)]
    if not chosen:
        broken(f"no mutation matches {args.names}; --list shows them")
    texts = {m.name: mutated_text(m) for m in chosen}  # every definition checked before anything runs
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.file}: {m.old!r} -> {m.new!r}\n    " + "\n    ".join(m.tests))
        return 0
    with tempfile.TemporaryDirectory(prefix="rlm-guard-mutations-") as temp:
        copy = copy_checkout(Path(temp) / "checkout")
        if not args.skip_baseline:
            tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
            code, detail = run_tests(copy, tests, args.timeout)
            if code not in (0, SKIPPED):
                print(f"the named tests fail without any mutation (pytest exit code {code}): {detail}")
                return 1
            skips = f" ({detail})" if code == SKIPPED else ""
            print(f"baseline: the {len(tests)} named tests pass unmutated{skips}")
        outcomes = []
        for mutation in chosen:
            outcome = judge(copy, mutation, texts[mutation.name], args.timeout)
            outcomes.append(outcome)
            print(f"{outcome.verdict:8} {mutation.name:32} {outcome.seconds:6.1f} s  {outcome.detail}", flush=True)
    caught = sum(o.verdict == "caught" for o in outcomes)
    print(f"\n{caught} of {len(outcomes)} mutations caught"
          + "".join(f"\n  {o.verdict}: {o.mutation.name}" for o in outcomes if o.verdict != "caught"))
    return 0 if caught == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())

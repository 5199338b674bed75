import os
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(autouse=True, scope="session")
def _subprocesses_use_this_checkout():
    """`python -m recursive_llm` in tests runs this checkout's code, whatever is installed."""
    os.environ["PYTHONPATH"] = SRC + os.pathsep + os.environ.get("PYTHONPATH", "")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Every test writes its trajectories under its own RLM_HOME and sees no real provider keys."""
    monkeypatch.setenv("RLM_HOME", str(tmp_path / "rlm-home"))
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "RLM_MODEL"):
        monkeypatch.delenv(name, raising=False)


# The fast tier: `python -m pytest -q -m "not slow"` leaves out the tests named here and takes about
# a sixth of the whole suite's time; `python -m pytest -q`, the README's command and CI's, runs them
# all. An entry is a test file (all of it) or `file::test` (every parametrization of that test),
# with why it is slow; tests/test_tiers.py checks each still names a test. The seconds are from
# `python -m pytest -q --durations=0` on 2 cores shared with other suites (the whole suite: 30 min).
SLOW: dict[str, str] = {
    # Whole programs: a fresh install, the worker suites again as another user, the embedded model.
    "test_fresh_install.py": "runs scripts/setup.sh from a fresh copy as a new user, pip and all (321 s)",
    "test_deployment.py::test_the_worker_tests_pass_as_an_unprivileged_user_from_a_0700_checkout":
        "runs nine worker test files again as an unprivileged user (226 s)",
    "test_real_model.py": "llama.cpp's server with the embedded model; its compaction test alone 165 s (218 s)",
    "test_local_model_e2e.py": "loads the embedded model and asks it (19 s)",
    "test_first_command.py": "the README's first command on the embedded model (9 s)",
    "test_memory.py::test_with_the_embedded_model_the_memory_section_is_in_logs_show_and_the_viewer":
        "the embedded model (4 s)",
    "test_attacks.py::test_attack_is_contained":
        "the whole attack battery in four worker set-ups (132 s); test_attacks.py's other tests stay",
    "test_bench_and_batch.py::test_a_wide_batch_fans_out_through_ray_workers": "starts Ray (56 s)",
    "test_bench_and_batch.py::test_batch_of_100_tasks_on_ray_and_a_rerun_skips_them": "starts Ray (49 s)",
    "test_bench_and_batch.py::test_rlm_bench_writes_report_tables_and_plots": "a whole rlm bench with its plots (14 s)",
    "test_export.py::test_bench_then_export_from_the_command_line": "rlm bench, then export, as processes (21 s)",
    "test_inputs_at_scale.py::test_semantic_search_finds_by_meaning": "loads PyTorch and an embedding model (22 s)",
    "test_models.py::test_litellm_over_http": "imports LiteLLM (9 s)",
    "test_resolver.py::test_litellm_models_resolve_when_installed": "imports LiteLLM (6 s)",
    # Clients, the command line and the browser end to end, each test a process or a server: the
    # fast tier keeps test_server.py, test_cli.py and test_viewer_habits.py for the same modules.
    "test_serve_every_client.py": "every client against rlm serve, processes and servers (87 s)",
    "test_serve_client_table.py": "docs/SERVING.md's clients against rlm serve (14 s)",
    "test_serve_clients.py": "simonw's llm and other clients as processes (24 s)",
    "test_first_minutes.py": "a newcomer's first commands, each an rlm process (35 s)",
    "test_cli_habits.py": "rlm commands as processes, some importing LiteLLM (102 s)",
    "test_viewer_browser.py": "the viewer in headless Chromium (7 s)",
    "test_serve_js_clients.py": "the npm clients (openai, the AI SDK) as node processes against rlm serve (40 s)",
    "test_mcp_inspector.py": "the MCP Inspector's CLI as node processes against rlm mcp (30 s)",
    "test_serve_client_envs.py": "DSPy and LlamaIndex against rlm serve, in their own venvs (.ci/run) (60 s)",
    # Many processes or a long wait, where the fast tier has a quicker test of the same code.
    "test_server_hostile.py::test_a_full_server_refuses_heavy_bodies_before_parsing_them_and_health_stays_fast": (
        "six 7.4 MB bodies at a full server while /health is watched (8 s)"),
    "test_server_hostile.py::test_the_token_comes_from_the_environment_or_a_file_never_argv":
        "rlm serve as processes (6 s)",
    "test_server_hostile.py::test_idle_and_slow_connections_are_closed": "waits out the idle timeouts (6 s)",
    "test_server_hostile.py::test_a_trickled_body_is_cut_at_the_body_deadline_and_connections_are_capped":
        "waits out the body deadline (5 s)",
    "test_server_hostile.py::test_a_huge_schema_is_a_400_naming_the_bound_and_the_server_keeps_answering":
        "9 MB schemas while /health is watched (5 s)",
    "test_openai_transport.py::test_a_ca_only_in_the_systems_store_is_trusted":
        "runs update-ca-certificates (9 s)",
    "test_tools.py::test_budgets_hold_a_tool_call_ends_at_the_runs_deadline": "waits out a run's deadline (8 s)",
    "test_forged_usage.py::test_forged_cached_tokens_make_no_negative_cost_and_do_not_lift_a_cost_budget": (
        "runs to a cost budget, honest and forged (8 s)"),
    "test_forged_usage.py::test_forged_token_counts_do_not_lift_a_token_budget":
        "runs to a token budget, honest and forged (6 s)",
    "test_mcp.py::test_mcp_ask_whose_run_failed_is_a_tool_error": "waits out the run's retries (8 s)",
    "test_bench_and_batch.py::test_reading_families_need_sub_calls_and_the_whole_input":
        "rlm bench of the reading families against the simulator (7 s)",
    "test_cli.py::test_context_window_compacts_a_self_hosted_models_conversation":
        "a run that compacts its conversation (6 s)",
    "test_kept_loop.py::test_a_process_that_never_closes_its_rlm_ends_cleanly": "a Python process and its exit (6 s)",
    "test_server_hostile.py::test_non_finite_limits_are_refused_before_any_call":
        "24 cases, a server each (30 s); the fast tier keeps the test of limits that are not positive numbers",
    "test_server_hostile.py::test_a_backtracking_pattern_never_blocks_the_server":
        "waits out the regex deadline (11 s)",
    "test_server.py::test_fifty_concurrent_requests_with_injected_faults_all_end_cleanly": "a load test (12 s)",
    "test_endpoint_memory.py::test_a_new_process_starts_at_the_width_the_endpoint_took_before":
        "new Python processes, one after another (14 s)",
    # The fast tier's slowest (measured 2026-12-06, quiet machine); each file keeps quicker tests.
    "test_cli.py::test_ask_provider_failure_exit_code":
        "waits out the provider's retries (6 s)",
    "test_tiers.py::test_not_slow_deselects_a_slow_test_and_keeps_the_others":
        "runs pytest twice in a subprocess (4 s)",
    "test_server_hostile.py::test_a_stream_dropped_before_its_first_chunk_gives_its_slot_back_and_stops_its_run":
        "rlm serve and a slow model, twice (8 s)",
    "test_bench_and_batch.py::test_tasks_are_deterministic_with_exact_answers":
        "builds every task family twice (4 s)",
    "test_adaptive_concurrency.py::test_with_a_cap_of_8_few_requests_are_refused_after_warm_up":
        "batches against a capped server (3 s)",
    "test_adaptive_concurrency.py::test_runs_on_different_event_loops_share_one_limit":
        "runs on four loops (3 s)",
    "test_openai_transport.py::test_a_certificate_error_is_not_retried":
        "TLS servers and waits (3 s each)",
    "test_guards.py::test_the_hosts_batch_limit_holds_at_the_limit_and_one_past_it":
        "two wide batches (3 s)",
    "test_server.py::test_concurrency_limit_gives_429":
        "holds a server full (3 s)",
    "test_store.py::test_an_identical_second_run_makes_no_network_calls":
        "two runs through HTTP (2 s)",
    "test_server.py::test_graceful_shutdown_finishes_running_requests":
        "waits out a shutdown (2 s)",
    "test_store.py::test_many_threads_and_processes_record_at_once":
        "processes writing one store (2 s)",
    "test_rlm.py::test_time_budget_stops_the_run":
        "waits out a run's time budget (2 s)",
    "test_store.py::test_logs_show_view_and_export_commands":
        "rlm commands as processes (2 s)",
    "test_adaptive_concurrency.py::test_a_straggling_sub_call_is_sent_again_and_the_first_answer_wins":
        "waits for stragglers (2 s each)",
    "test_adaptive_concurrency.py::test_a_hedge_is_sent_only_when_the_budget_has_room_for_it":
        "waits for stragglers (2 s each)",
    "test_viewer_habits.py::test_header_counts_plural_axis_and_the_fallback_entry":
        "renders runs in Chromium (2 s)",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Marks the tests that SLOW names with `slow` (registered in pyproject.toml), which `-m "not slow"` deselects."""
    for item in items:
        reason = SLOW.get(item.path.name) or SLOW.get(f"{item.path.name}::{getattr(item, 'originalname', item.name)}")
        if reason:
            item.add_marker(pytest.mark.slow(reason=reason))

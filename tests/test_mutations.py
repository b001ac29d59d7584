"""Mutation checks: remove one privacy safeguard in a copy of the code, and some test fails.

A privacy test that stays green when the noise, the Poisson sampling or a check is gone
proves nothing. Each mutation below edits one line of a fresh copy of the packages and
runs the tests that back that safeguard (docs/THREAT_MODEL.md lists them); the mutation
is "killed" when they fail. A control run of the unmutated copy must pass them all.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("client", "common", "coordinator", "simulations", "tests")
NODE = "tests/test_node_privacy.py::"


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTATIONS = (
    Mutation("noise σ forced to 0", "common/training/dp.py",
             "noise_multiplier=noise_multiplier,\n            max_grad_norm=max_grad_norm,",
             "noise_multiplier=0.0,\n            max_grad_norm=max_grad_norm,",
             (NODE + "test_noise_std_is_sigma_times_clip_over_batch",)),
    Mutation("Poisson sampling off", "common/training/dp.py", "poisson_sampling=True,",
             "poisson_sampling=False,",
             (NODE + "test_poisson_sampling_gives_batches_of_varying_size",)),
    Mutation("noise from torch's global generator", "common/training/dp.py",
             "noise_generator=torch.Generator(device=device).manual_seed(seeds.noise),", "",
             (NODE + "test_same_seeds_rerun_bit_identically_and_other_seeds_differ",)),
    Mutation("a public sampling seed", "client/app.py",
             "seeds=DpSeeds.for_ledger_record(state.secret, record.index),",
             "seeds=DpSeeds(cfg.seed * 1000 + plan.round, cfg.seed * 1000 + plan.round),",
             (NODE + "test_the_client_samples_from_its_secret_not_from_public_values",)),
    Mutation("DP randomness reused across runs", "client/app.py",
             "seeds=DpSeeds.for_ledger_record(state.secret, record.index),",
             "seeds=DpSeeds.for_ledger_record(state.secret, plan.round),",
             (NODE + "test_the_client_samples_from_its_secret_not_from_public_values",)),
    Mutation("a stale q", "client/app.py",
             "if saved is not None and (saved.sample_rate, saved.steps_per_round) == (q, steps):",
             "if saved is not None:",
             (NODE + "test_the_recorded_q_follows_the_data_when_it_changes_mid_run",)),
    Mutation("dp = false honoured", "client/app.py", "if not policy.allow_non_dp:",
             "if False:",
             (NODE + "test_a_run_cannot_switch_dp_off_on_a_node_that_forbids_it",)),
    Mutation("a larger δ in a later run", "client/app.py",
             "delta = state.ledger.delta() or policy.delta", "delta = policy.delta",
             (NODE + "test_a_larger_delta_in_a_later_run_does_not_free_a_spent_budget",)),
    Mutation("the budget check skipped", "client/app.py", "if not check.fits:", "if False:",
             ("tests/test_client_budget.py::"
              "test_client_declines_the_round_that_would_pass_its_budget",)),
    Mutation("the run config raises the node's budget", "common/privacy/policy.py",
             "return min(self.epsilon, requested) if requested > 0 else self.epsilon",
             "return requested",
             (NODE + "test_the_run_config_cannot_raise_the_nodes_budget",)),
    Mutation("an unmasked answer where the policy forbids it", "client/app.py",
             "if not secure and node.policy.require_secure_aggregation:", "if False:",
             (NODE + "test_a_node_refuses_an_unmasked_round_unless_its_policy_allows_it",)),
    Mutation("exception text sent to the coordinator", "client/app.py",
             "raise NodeRoundFailed(Refusal.FAILED) from None", "raise",
             (NODE + "test_a_failed_round_sends_a_reason_code_never_the_exception_text",)),
    Mutation("the exact example count sent", "common/protocol.py",
             "return max(COUNT_BUCKET, -(-num_examples // COUNT_BUCKET) * COUNT_BUCKET)",
             "return num_examples",
             (NODE + "test_counts_leave_only_bucketed_and_only_when_the_rule_needs_them",)),
    Mutation("an unsigned ledger passed as ok", "simulations/ledger_audit.py",
             'Finding(str(path), "note" if allow_unsigned else "error",',
             'Finding(str(path), "note",',
             ("tests/test_audit_ledger.py::test_report_fails_closed",)),
    Mutation("a truncated ledger passed as ok", "simulations/ledger_verify.py",
             "if latest.records <= len(records):", "if True:",
             ("tests/test_audit_ledger.py::test_ledgers_are_checked_against_the_coordinator_heads",)),
    Mutation("a swapped ledger key passed as ok", "simulations/ledger_verify.py",
             "other = [e for e in entries if e.key != fingerprint]", "other = []",
             ("tests/test_audit_ledger.py::test_ledgers_are_checked_against_the_coordinator_heads",)),
    Mutation("an app the node did not pin installed", "simulations/app_pin.py",
             "if digest not in pins:", "if False:",
             ("tests/test_node_checks.py::"
              "test_an_unpinned_app_is_refused_before_it_is_installed",)),
    Mutation("a δ change within a ledger accepted", "common/privacy/ledger.py",
             "if first_delta is not None and record.delta != first_delta:", "if False:",
             ("tests/test_audit_ledger.py::test_a_record_with_another_delta_fails_verify_and_report",)),
)


def _copy(tmp: Path) -> Path:
    tree = tmp / "tree"
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tree / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


def _pytest(tree: Path, tests: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}  # the copy, not the installed checkout
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                           "-o", "addopts=", *tests], cwd=tree, env=env, capture_output=True,
                          text=True, timeout=600)


def _where_imported(tree: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([sys.executable, "-c", "import client.app; print(client.app.__file__)"],
                          cwd=tree, env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.slow
def test_the_unmutated_copy_passes_every_targeted_test(tmp_path: Path) -> None:
    tree = _copy(tmp_path)
    assert _where_imported(tree).startswith(str(tree))
    tests = tuple(t for m in MUTATIONS for t in m.tests)
    proc = _pytest(tree, tests)
    assert proc.returncode == 0, proc.stdout[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m.name for m in MUTATIONS])
def test_each_mutation_is_killed(mutation: Mutation, tmp_path: Path) -> None:
    tree = _copy(tmp_path)
    target = tree / mutation.path
    text = target.read_text()
    assert text.count(mutation.old) == 1, f"{mutation.path} no longer holds {mutation.old!r}"
    target.write_text(text.replace(mutation.old, mutation.new))
    proc = _pytest(tree, mutation.tests)
    assert proc.returncode == 1, (  # 1: tests ran and failed (not a collection error)
        f"the mutation {mutation.name!r} survived: {proc.stdout[-2000:]}")

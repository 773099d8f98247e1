"""`rlivs ingest` survives SIGKILL at random moments: 24 seeded kills, each followed by integrity, no-loss, resume and
FIFO checks against an uninterrupted run (tests/helpers/crash_harness.py says exactly what is checked)."""

import json
import signal
from collections import Counter

import pytest

from tests.helpers.crash_harness import run_harness

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")

TRIALS, SEED = 24, 7


def test_sigkill_at_random_moments_loses_nothing_and_resumes_exactly(bundle, tmp_path):
    result = run_harness(bundle, tmp_path, trials=TRIALS, seed=SEED, log=lambda s: None)
    summary = result.summary()
    print(json.dumps(summary))  # the figures (pytest -s shows them)
    # every trial ran its checks (a failed check raises inside run_harness, naming the trial and what differed)
    assert summary["trials"] == summary["checks_passed"] == TRIALS >= 20
    # the seeded schedule: start-up kills, kills after 1-3 committed clips, two thirds with a pause in the commit
    assert sum(t.waited_clips == 0 for t in result.trials) >= 2
    assert Counter(t.mode for t in result.trials) == {"plain": 8, "slow-commit": 8, "aimed": 8}
    # kills did land inside open transactions (their clip was then absent: rolled back), and outside them
    assert summary["kills_inside_a_transaction"] >= 4
    assert summary["kills_landed"].get("mid-clip", 0) >= 4
    # every resumed child started exactly at the next clip, and the stream made progress through the kills
    assert all(t.first_clip in (None, t.clips_before) for t in result.trials)
    assert result.trials[-1].clips_after > TRIALS // 2

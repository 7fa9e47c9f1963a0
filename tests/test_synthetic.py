"""The toy corpus: controls are held out (no control asks a trained question), and redrawing the ones that
were changes nothing else.

    python -m pytest -q tests/test_synthetic.py
"""

from __future__ import annotations

import pytest

from obliviate.data.synthetic import make_corpus


@pytest.mark.parametrize("seed,n_members", [(0, 160), (0, 640), (1, 160), (2, 640), (1, 24)])
def test_no_control_shares_a_prompt_with_a_trained_row(seed, n_members):
    corpus = make_corpus(seed=seed, n_members=n_members)
    trained = {row["prompt"] for row in corpus.train}
    controls = [p for p in corpus.probes if p["role"] == "control"] + corpus.calibration_controls
    assert len(controls) == 2 * 128
    assert not [c["id"] for c in controls if c["prompt"] in trained]
    # heldout.jsonl is the first controls' text, in their order
    first = [p for p in corpus.probes if p["role"] == "control"]
    assert [h["text"] for h in corpus.heldout] == [c["prompt"] + c["completion"] for c in first]


def test_only_the_colliding_controls_changed():
    from obliviate.data import synthetic

    kept = synthetic._hold_out_controls
    try:
        synthetic._hold_out_controls = lambda corpus, rng: None
        raw = make_corpus(seed=0, n_members=640)
    finally:
        synthetic._hold_out_controls = kept
    fixed = make_corpus(seed=0, n_members=640)
    trained = {row["prompt"] for row in raw.train}
    assert raw.train == fixed.train and raw.pretrain == fixed.pretrain and raw.retain == fixed.retain
    changed = 0
    for before, after in zip(raw.probes + raw.calibration_controls, fixed.probes + fixed.calibration_controls):
        assert before["id"] == after["id"] and before["group"] == after["group"]
        if before["prompt"] in trained and before["role"] == "control":
            changed += 1
            assert after["prompt"] != before["prompt"]
        else:
            assert after == before
    assert changed > 10  # 640 records reuse names: about a third of the record controls collided

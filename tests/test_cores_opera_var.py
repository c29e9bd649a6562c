"""OPERA scores/rollback, beam bookkeeping and VAR sinks/redistribution, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from decoding.cores import beam, opera, var

NEG_INF = float("-inf")


def test_overtrust_column_products() -> None:
    w = torch.tensor(
        [
            [1.0, 0.0, 0.0],
            [0.5, 0.5, 0.0],
            [0.1, 0.6, 0.3],
        ]
    )
    # sigma 10: col0 = 10*5*1 = 50, col1 = 5*6 = 30, col2 = 3; times 1e-7
    phi, loc = opera.overtrust_scores(w, 10.0)
    assert float(phi) == pytest.approx(50e-7)
    assert int(loc) == 0
    w2 = w.clone()
    w2[2] = torch.tensor([0.0, 0.9, 0.1])  # col0 product becomes 0
    phi, loc = opera.overtrust_scores(torch.stack([w, w2]), 10.0)
    assert phi.tolist() == pytest.approx([50e-7, 45e-7])
    assert loc.tolist() == [0, 1]


def test_overtrust_does_not_overflow() -> None:
    w = torch.tril(torch.ones(200, 200)) * 0.9  # 200 factors of 45 -> ~1e330 * 1e-7
    phi, loc = opera.overtrust_scores(w, 50.0)
    assert math.isinf(float(phi)) or float(phi) > 1e300
    assert int(loc) == 0


def test_row_normalisation() -> None:
    out = opera.normalize_rows(torch.tensor([[1.0, 3.0], [0.0, 0.0]]))
    assert out.tolist() == [[0.25, 0.75], [0.0, 0.0]]


def test_penalty_bonus_then_overtrust() -> None:
    phi = torch.tensor([2.0, 0.5])
    img = torch.tensor([0.3, 0.1])
    assert opera.candidate_penalty(phi, img, 10, 1.0).tolist() == pytest.approx([0.3, 0.1])
    assert opera.candidate_penalty(phi, img, 11, 2.0).tolist() == [-4.0, -1.0]
    assert opera.candidate_penalty(phi, img, 11, 0.0).tolist() == [0.0, 0.0]


def test_mode_ties_take_smallest() -> None:
    assert opera.mode([3, 1, 3, 1, 2]) == 1
    assert opera.mode([4, 4, 2]) == 4


def _retro(beams: int = 2, threshold: int = 2, candidates: int = 2) -> opera.Retrospection:
    return opera.Retrospection(beams, threshold, candidates, window=512)


def test_rollback_needs_every_beam_over_threshold_and_location_10() -> None:
    r = _retro()
    for _ in range(3):
        loc = r.record(torch.tensor([[12, 12], [12, 3]]))  # beam 1: mode of (12,3) = 3
    assert loc == 3  # mode over beams (12, 3) -> 3
    assert r.target(12, 20) is None  # beam 1 never recorded 12
    r = _retro()
    for _ in range(2):
        r.record(torch.tensor([[12, 12], [12, 12]]))
    assert r.target(12, 20) is None  # 2 occurrences, need > 2
    r.record(torch.tensor([[12, 12], [12, 12]]))
    assert r.target(12, 20) == 13
    r2 = _retro()
    for _ in range(3):
        r2.record(torch.tensor([[9, 9], [9, 9]]))
    assert r2.target(9, 20) is None  # locations below 10 never trigger


def test_rollback_position_budget_and_window() -> None:
    r = _retro(beams=1, threshold=0, candidates=2)
    r.record(torch.tensor([[12]]))
    assert [r.target(12, 30) for _ in range(5)] == [13, 13, 12, 12, None]
    r = opera.Retrospection(1, 0, 5, window=4)
    r.record(torch.tensor([[12]]))
    assert r.target(12, 30) == 30 - 4 - 1  # at most `window` positions back


def test_rollback_target_clamped_to_last_decided_position() -> None:
    r = _retro(beams=1, threshold=0, candidates=5)
    r.record(torch.tensor([[12]]))
    assert r.target(12, 13) == 11  # 12 tokens decided (0..11) + candidate 12


def test_reject_accumulates_and_forgets_later_positions() -> None:
    r = _retro()
    assert r.reject(13, [(0, 5)]) == {(0, 5)}
    r.reject(15, [(1, 7)])
    assert r.reject(13, [(1, 6)]) == {(0, 5), (1, 6)}
    assert 15 not in r.rejected


def test_history_follows_beam_reordering() -> None:
    r = _retro()
    r.record(torch.tensor([[1, 1], [2, 2]]))
    r.reorder([1, 1])
    assert r.history == [[2], [2]]


def _lp(rows: list[list[float]]) -> torch.Tensor:
    return torch.log(torch.tensor(rows))


def test_beam_step_by_hand() -> None:
    eos = {3}
    s = beam.BeamState.start(2)
    # step 1: only beam 0 counts (beam 1 starts at -1e9)
    s, src, tok = beam.beam_step(s, _lp([[0.5, 0.3, 0.1, 0.1], [0.9, 0.05, 0.03, 0.02]]), eos, 5)
    assert (src, tok) == ([0, 0], [0, 1])
    assert s.running == [[0], [1]]
    assert s.running_scores.tolist() == pytest.approx([math.log(0.5), math.log(0.3)])
    # step 2: EOS from beam 1 ranks 2nd -> finished with score (ln .3 + ln .6) / 2
    s, src, tok = beam.beam_step(s, _lp([[0.4, 0.1, 0.3, 0.2], [0.1, 0.1, 0.2, 0.6]]), eos, 5)
    assert s.finished[0] == [1, 3]
    assert float(s.finished_scores[0]) == pytest.approx((math.log(0.3) + math.log(0.6)) / 2)
    assert s.running == [[0, 0], [0, 2]]  # ln .2 (.5*.4) and ln .15 (.5*.3)
    assert (src, tok) == ([0, 0], [0, 2])
    assert not s.done  # one finished slot still empty
    # max length 3 reached: everything in the top-2 finishes
    s, _, _ = beam.beam_step(s, _lp([[0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]]), eos, 3)
    assert s.done
    # top-2 of step 3: [0,0,0] ln(.14)/3 = -0.655 and [0,2,0] ln(.0375)/3 = -1.094;
    # merged with [1,3] at -0.857 the two best finished are:
    assert s.finished == [[0, 0, 0], [1, 3]]
    tokens, steps = s.best()
    assert tokens == [0, 0, 0]
    assert steps == pytest.approx([math.log(0.5), math.log(0.4), math.log(0.7)])


def test_excluded_tokens_never_chosen() -> None:
    s = beam.BeamState.start(1)
    lp = torch.tensor([[NEG_INF, math.log(0.2), NEG_INF, math.log(0.8)]])
    s, src, tok = beam.beam_step(s, lp, {0}, 4)
    assert tok == [3] and src == [0]


def test_var_sink_scores() -> None:
    x = torch.zeros(2, 8)
    x[0, 3] = 4.0  # rms = sqrt(16/8) = sqrt 2 -> phi = 4/sqrt2 = 2.83
    x[1] = 1.0  # rms 1, phi 1
    phi = var.sink_scores(x, [3, 5])
    assert phi.tolist() == pytest.approx([4 / math.sqrt(2 + 1e-6), 1.0 / math.sqrt(1 + 1e-6)])
    assert var.sink_mask(x, [3, 5], 2.0).tolist() == [True, False]
    assert var.sink_mask(x, [5], 2.0).tolist() == [False, False]


# keys: 0 = BOS (text sink), 1..4 image (1 = visual sink), 5 = text
IMAGE = torch.tensor([False, True, True, True, True, False])
SINKS = torch.tensor([True, True, False, False, False, False])
VSINKS = SINKS & IMAGE


def test_var_row_selection() -> None:
    probs = torch.tensor(
        [
            [0.5, 0.1, 0.2, 0.1, 0.0, 0.1],  # V=.4, r=.25 -> selected (rho .5)
            [0.8, 0.05, 0.05, 0.0, 0.0, 0.1],  # V=.1 < summ .2
            [0.2, 0.5, 0.1, 0.1, 0.0, 0.1],  # V=.7, r=.714 > .5
        ]
    )
    assert var.select_rows(probs, IMAGE, VSINKS, rho=0.5, summ=0.2).tolist() == [
        True,
        False,
        False,
    ]
    # paper rho .2 -> code rho .8: the third row (r=.714) passes too
    assert var.select_rows(probs, IMAGE, VSINKS, 0.2, 0.2).tolist() == [True, False, True]


def test_var_no_visual_sinks_no_rows() -> None:
    probs = torch.tensor([[0.5, 0.1, 0.2, 0.1, 0.0, 0.1]])
    none = torch.zeros(6, dtype=torch.bool)
    assert not var.select_rows(probs, IMAGE, none, 0.5, 0.2).any()


def test_var_redistribution_by_hand() -> None:
    probs = torch.tensor([[0.5, 0.1, 0.2, 0.1, 0.0, 0.1], [0.5, 0.1, 0.2, 0.1, 0.0, 0.1]])
    rows = torch.tensor([True, False])
    out = var.redistribute(probs, rows, SINKS, IMAGE, p=0.4)
    # sinks .5 and .1 keep 60%: .3, .06; moved .24 onto tokens 2,3 (2:1) -> +.16, +.08
    assert out[0].tolist() == pytest.approx([0.3, 0.06, 0.36, 0.18, 0.0, 0.1])
    assert float(out[0].sum()) == pytest.approx(1.0)
    assert torch.equal(out[1], probs[1])
    assert var.redistribute(probs, rows, SINKS, IMAGE, p=0.0) is probs


def test_var_row_without_targets_unchanged() -> None:
    probs = torch.tensor([[0.7, 0.3, 0.0, 0.0, 0.0, 0.0]])
    out = var.redistribute(probs, torch.tensor([True]), SINKS, IMAGE, p=0.4)
    assert torch.equal(out, probs)

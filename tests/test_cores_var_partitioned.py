"""VAR's partitioned-attention form equals the dense definition (select + redistribute)."""

from __future__ import annotations

import math

import pytest
import torch

from decoding.cores import var as var_core


def _cpu_flash(q, k, v, bias, scale):  # noqa: ANN001, ANN202
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, 0.0, False, attn_mask=bias.expand(q.shape[0], 1, q.shape[2], k.shape[2]),
        scale=scale,
    )[:2]  # fmt: skip
    return out, lse


def _case(seed: int):  # noqa: ANN202
    g = torch.Generator().manual_seed(seed)
    n, heads, width, length, dim = 3, 4, 5, 16, 8
    q = torch.randn(n, heads, width, dim, generator=g)
    k = torch.randn(n, heads, length, dim, generator=g) * 1.5
    v = torch.randn(n, heads, length, dim, generator=g)
    image = torch.zeros(n, length, dtype=torch.bool)
    image[:, 2:10] = True
    sinks = torch.zeros(n, length, dtype=torch.bool)
    sinks[0, [0, 3, 4]] = True  # text sink (BOS) and two visual sinks
    sinks[1, [0, 12]] = True  # text sinks only: no row may change
    sinks[2, [5]] = True
    # Queries at positions 11..15: each sees keys up to its own position.
    pos = torch.arange(11, 16)
    bias = torch.where(torch.arange(length)[None, :] <= pos[:, None], 0.0, float("-inf"))
    bias = bias[None, None].expand(n, 1, width, length).clone()
    bias[2, :, :, 14:] = float("-inf")  # a shorter request
    p = torch.tensor([0.4, 0.9, 1.0])
    rho = torch.tensor([0.5, 0.0, 0.1])
    summ = torch.tensor([0.2, 0.0, 0.05])
    return q, k, v, bias, image, sinks, p, rho, summ


def _dense(q, k, v, bias, image, sinks, p, rho, summ, scale):  # noqa: ANN001, ANN202
    probs = torch.softmax((q @ k.transpose(-1, -2)) * scale + bias, dim=-1)
    out, new = probs @ v, torch.empty_like(probs)
    changed = torch.zeros(probs.shape[:-1], dtype=torch.bool)
    for r in range(q.shape[0]):
        rows = var_core.select_rows(probs[r], image[r], sinks[r] & image[r], float(rho[r]),
                                    float(summ[r]))  # fmt: skip
        new[r] = var_core.redistribute(probs[r], rows, sinks[r], image[r], float(p[r]))
        changed[r] = rows & ((probs[r] * (image[r] & ~sinks[r])).sum(-1) > 0)
    return out, new @ v, changed


@pytest.mark.parametrize(
    "attention", [var_core.math_lse_attention, _cpu_flash, var_core.SHARED_SCORES]
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_partitioned_update_equals_the_dense_definition(attention, seed: int) -> None:  # noqa: ANN001
    q, k, v, bias, image, sinks, p, rho, summ = _case(seed)
    scale = 1 / math.sqrt(q.shape[-1])
    out, want, want_changed = _dense(q, k, v, bias, image, sinks, p, rho, summ, scale)
    delta, changed, got_out = var_core.partitioned_update(
        q, k, v, bias, scale, image, sinks, p, 1 - rho, summ, attention=attention
    )
    assert torch.equal(changed, want_changed)
    assert changed[0].any() and changed[2].any() and not changed[1].any()
    torch.testing.assert_close(got_out, out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out + delta, want, rtol=1e-5, atol=1e-5)


def test_hand_computed_single_row() -> None:
    # One head, one query, keys: [sink (text), visual sink, target, target, text].
    # Scores chosen so that the probabilities are [0.4, 0.2, 0.1, 0.1, 0.2].
    probs = torch.tensor([0.4, 0.2, 0.1, 0.1, 0.2])
    k = torch.log(probs)[None, None, :, None].expand(1, 1, 5, 1).clone()
    q = torch.ones(1, 1, 1, 1)
    v = torch.eye(5)[None, None]  # output = the probabilities themselves
    bias = torch.zeros(1, 1, 1, 5)
    image = torch.tensor([[False, True, True, True, False]])
    sinks = torch.tensor([[True, True, False, False, False]])
    delta, changed, _ = var_core.partitioned_update(
        q, k, v[..., :5, :5], bias, 1.0, image, sinks, torch.tensor([0.5]),
        torch.tensor([0.9]), torch.tensor([0.1]),
    )  # fmt: skip
    # image mass 0.4, visual share 0.5 <= 0.9: selected. Sinks lose half of 0.6 = 0.3,
    # split over the two targets in proportion (0.1 : 0.1).
    assert bool(changed)
    torch.testing.assert_close(
        probs + delta[0, 0, 0], torch.tensor([0.2, 0.1, 0.25, 0.25, 0.2]), rtol=0, atol=1e-6
    )


def test_no_sinks_no_change() -> None:
    q, k, v, bias, image, _, p, rho, summ = _case(0)
    none = torch.zeros_like(image)
    delta, changed, _ = var_core.partitioned_update(
        q, k, v, bias, 0.3, image, none, p, 1 - rho, summ
    )
    assert not changed.any() and not delta.any()


def test_cuda_path_through_a_cpu_stand_in() -> None:
    """The CUDA wrapper's calling convention (bias expanded per head, log-sum-exp padded to
    a multiple of 32 queries and cut back), with the CPU formula standing in for the
    memory-efficient kernel."""
    from decoding.engine.worker import lse

    calls = []

    def efficient(q, k, v, bias, compute_lse, dropout, causal, *, scale):  # noqa: ANN001, ANN202
        calls.append((tuple(bias.shape), compute_lse, dropout, causal))
        out, lse_ = var_core.math_lse_attention(q, k, v, bias, scale)
        pad = -lse_.shape[-1] % 32
        return out, torch.nn.functional.pad(lse_, (0, pad), value=float("nan")), None, None

    q, k, v, bias, image, sinks, p, rho, summ = _case(1)
    scale = 0.35
    via_cuda = var_core.partitioned_update(
        q, k, v, bias, scale, image, sinks, p, 1 - rho, summ,
        attention=lambda *a: lse.cuda_lse_attention(*a, op=efficient),
    )  # fmt: skip
    plain = var_core.partitioned_update(q, k, v, bias, scale, image, sinks, p, 1 - rho, summ)
    # One call over the stacked queries [q; q] (all keys, then the non-sink image keys).
    assert calls[0] == ((3, 4, 10, 16), True, 0.0, False)
    for got, want in zip(via_cuda, plain, strict=True):
        torch.testing.assert_close(got, want)
    assert lse.lse_attention_for(torch.device("cpu")) is lse.cpu_lse_attention
    assert lse.lse_attention_for(torch.device("cpu"), 16) is lse.cpu_lse_attention
    assert lse.lse_attention_for(torch.device("cpu"), 1) == var_core.SHARED_SCORES
    assert lse.lse_attention_for(torch.device("cuda"), 1) is lse.cuda_lse_attention
    assert lse.lse_attention_for(torch.device("cuda")) is lse.cuda_lse_attention


def test_partition_shared_between_layers_equals_one_per_layer() -> None:
    """The engine builds one partition per step for all edited layers; each layer's slice
    gives the same update as a partition of that layer alone (another layer's sinks and a
    different sink count included)."""
    q, k, v, bias, image, sinks, p, rho, summ = _case(2)
    other = torch.zeros_like(sinks)
    other[:, [0, 6, 7, 8, 9]] = True  # more sinks in the second layer: padding differs
    stacked = torch.stack([sinks, other])
    for attention in (var_core.math_lse_attention, var_core.SHARED_SCORES):
        kernel = attention != var_core.SHARED_SCORES
        shared = var_core.partition(bias, image, stacked, kernel)
        assert shared is not None and (not kernel or shared.order.shape == (6, 5))
        for i, layer_sinks in enumerate((sinks, other)):
            got = var_core.apply_partition(q, k, v, shared.layer(i), 0.4, p, 1 - rho, summ,
                                           attention)  # fmt: skip
            want = var_core.partitioned_update(q, k, v, bias, 0.4, image, layer_sinks, p,
                                               1 - rho, summ)  # fmt: skip
            for a, b in zip(got, want, strict=True):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        assert var_core.partition(bias, image, torch.zeros_like(stacked), kernel) is None


def test_step_timing_harness_runs(tmp_path) -> None:  # noqa: ANN001
    import json

    from decoding.testing import var_step_bench

    out = tmp_path / "var.json"
    var_step_bench.main(["--small", "--repeats", "1", "--device", "cpu", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["var_ms_per_step"] > 0 and result["decoder_ms_per_step"] > 0
    assert result["shapes"]["edited_layers"] == 2 and result["target"] == 0.25

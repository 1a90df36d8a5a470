"""Non-finite logits never become tokens: decode_loop raises NonFiniteLogitsError naming the step."""

import pytest
import torch

import model
from decoding.generate import NonFiniteLogitsError, decode_loop, generate


def _loop(bad_step, temperature=0.0, eos_id=None, rows=1, bad_row=0, value=float("nan")):
    """decode_loop over fake logits (rows, 8) where step bad_step's row bad_row holds `value`."""
    def logits_at(i):
        x = torch.arange(8.0).repeat(rows, 1)
        if i == bad_step:
            x[bad_row, 3] = value
        return x

    prompt = torch.zeros(rows, 2, dtype=torch.long)
    return decode_loop(lambda: logits_at(0), lambda tokens, pos: logits_at(pos - 1), prompt, 4,
                       temperature=temperature, seed=0, eos_id=eos_id)


def test_finite_logits_pass():
    assert _loop(bad_step=None).new_ids == [[7, 7, 7, 7]]


@pytest.mark.parametrize("bad_step, where", [(0, r"the prefill \(step 0\)"), (2, "decode step 2")])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_nan_logits_raise_naming_the_step(bad_step, where, temperature):
    with pytest.raises(NonFiniteLogitsError, match=where + ", row 0"):
        _loop(bad_step, temperature)


def test_inf_in_second_row_and_eos_stop():
    with pytest.raises(NonFiniteLogitsError, match="decode step 1, row 1"):
        _loop(1, rows=2, bad_row=1, value=float("inf"))
    with pytest.raises(NonFiniteLogitsError, match="step 0"):  # NaN argmax hitting eos must not end it cleanly
        _loop(0, eos_id=3)


def test_nan_weights_through_generate():
    net = model.load("embedded")
    with torch.no_grad():
        net.model.norm.weight[0] = float("nan")
    with pytest.raises(NonFiniteLogitsError, match="prefill"):
        generate(net, [256, 72, 101], 4)

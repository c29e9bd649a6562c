"""Parameter models of the five strategies: defaults, ranges, names, errors."""

from __future__ import annotations

import pytest

from decoding.strategies import DecodingParamError, get_strategy, resolve

DEFAULTS = {
    "vcd": {"alpha": 1.0, "beta": 0.1, "noise_step": 500, "noise_seed": 0},
    "avc": {"alpha": 1.0, "beta": 0.1, "gamma": 0.5, "lamb": 1.0, "mask": "zeros"},
    "damro": {"alpha": 2.0, "beta": 0.1, "top_k": 10},
    "opera": {
        "alpha": 1.0,
        "rollback": True,
        "num_beams": 5,
        "num_candidates": 5,
        "scale_factor": 50.0,
        "threshold": 15,
        "window": 512,
    },
    "var": {"p": 0.4, "rho": 0.5, "tau": None, "summ": 0.2},
}


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_defaults_are_the_papers(name: str) -> None:
    d = resolve({"strategy": name})
    assert d.as_dict() == {"strategy": name, **DEFAULTS[name]}
    assert get_strategy(name).needs_image
    assert get_strategy(name).__doc__ and "arXiv" in get_strategy(name).__doc__


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        ({"strategy": "vcd", "alpha": -0.5}, "decoding.alpha"),
        ({"strategy": "vcd", "beta": 1.5}, "decoding.beta"),
        ({"strategy": "vcd", "noise_step": 1000}, "decoding.noise_step"),
        ({"strategy": "vcd", "noise_seed": -1}, "decoding.noise_seed"),
        ({"strategy": "vcd", "noise_step": 1.5}, "decoding.noise_step"),
        ({"strategy": "avc", "gamma": 0}, "decoding.gamma"),
        ({"strategy": "avc", "mask": "noise"}, "decoding.mask"),
        ({"strategy": "damro", "top_k": 0}, "decoding.top_k"),
        ({"strategy": "opera", "num_beams": 0}, "decoding.num_beams"),
        ({"strategy": "opera", "rollback": "yes"}, "decoding.rollback"),
        ({"strategy": "opera", "scale_factor": 0}, "decoding.scale_factor"),
        ({"strategy": "var", "p": 1.2}, "decoding.p"),
        ({"strategy": "var", "rho": -0.1}, "decoding.rho"),
        ({"strategy": "var", "tau": 0}, "decoding.tau"),
        ({"strategy": "var", "cd_alpha": 1}, "decoding.cd_alpha"),
    ],
)
def test_bad_values_name_the_field_and_quote_the_value(raw: dict, param: str) -> None:
    with pytest.raises(DecodingParamError) as err:
        resolve(raw)
    assert err.value.param == param
    bad = raw[param.split(".")[1]]
    assert repr(bad) in err.value.message


def test_ints_accepted_for_floats_and_limits_accepted() -> None:
    assert resolve({"strategy": "vcd", "alpha": 0, "beta": 1}).params.alpha == 0.0
    assert resolve({"strategy": "var", "p": 0, "tau": 5}).params.tau == 5.0
    assert resolve({"strategy": "opera", "num_beams": 1}).params.num_beams == 1


def test_opera_rejects_sampling() -> None:
    opera = get_strategy("opera")
    params = resolve({"strategy": "opera"}).params
    opera.check_request(params, {"temperature": 0})
    opera.check_request(params, {"top_p": 1.0})
    for body, key in (({"temperature": 0.7}, "temperature"), ({"top_p": 0.9}, "top_p")):
        with pytest.raises(DecodingParamError) as err:
            opera.check_request(params, body)
        assert err.value.param == key


def test_params_are_frozen() -> None:
    params = resolve({"strategy": "damro"}).params
    with pytest.raises(Exception):  # noqa: B017
        params.top_k = 3  # type: ignore[misc]

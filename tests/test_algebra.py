"""The KL algebra: construction, arithmetic, printing and expansion."""

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kldiv import KL, DataDensity, Expression, S
from kldiv.errors import VariableMismatchError
from toys import decoupled_parts, marginal_parts, triangle_parts

enc, dec, f, q, p, pi = triangle_parts()
_, _, fx, _, _, big_pi = decoupled_parts()
_, q0, mu = marginal_parts()
XZ = [q, p, pi, big_pi]


def test_triangle_prints_like_the_paper():
    triangle = KL(q, p) + KL(p, pi) - KL(q, pi)
    assert str(triangle) == "KL(q ‖ p) + KL(p ‖ π) − KL(q ‖ π)"
    assert triangle.latex() == (
        r"\mathrm{KL}(q \,\|\, p) + \mathrm{KL}(p \,\|\, \pi) - \mathrm{KL}(q \,\|\, \pi)"
    )
    assert triangle._repr_latex_().startswith("$") and triangle._repr_latex_().endswith("$")


def test_coefficients_and_symmetric_divergence_print():
    e = 2 * KL(q, p) - 0.5 * S(big_pi, p)
    assert str(e) == "2·KL(q ‖ p) − 0.5·S(Π, p)"
    assert str(-KL(q, p)) == "−KL(q ‖ p)"
    assert str(KL(q, p) - KL(q, p)) == "0"
    assert str(S(big_pi, p)) == "S(Π, p)"
    assert S(big_pi, p).latex() == r"S(\Pi, p)"


def test_mismatched_variables_are_refused_at_construction():
    with pytest.raises(VariableMismatchError, match=r"over \(x, z\).*over \(x\)"):
        KL(q, mu)
    with pytest.raises(VariableMismatchError):
        S(q0, pi)
    assert isinstance(VariableMismatchError("m"), TypeError)


def test_non_densities_are_refused():
    with pytest.raises(TypeError, match="two kldiv densities"):
        KL(q, enc)


def test_like_divergences_collect_and_zero_ones_vanish():
    e = KL(q, p) + KL(q, p) - 2 * KL(q, p) + KL(p, pi)
    assert [(c, str(d)) for c, d in e.items] == [(1.0, "KL(p ‖ π)")]
    assert S(q, p).items[0][1].key == S(p, q).items[0][1].key
    assert len((S(q, p) + S(p, q)).items) == 1


def test_sum_and_division():
    total = sum([KL(q, p), KL(p, pi)])
    assert str(total) == "KL(q ‖ p) + KL(p ‖ π)"
    assert str(KL(q, p) / 4) == "0.25·KL(q ‖ p)"


def test_kl_expands_into_terms_of_both_sides():
    terms = [(c.coef, c.source.name, c.term.label) for c in KL(q, pi).expand()]
    assert terms == [
        (1.0, "q", "log q_data(x)"),
        (1.0, "q", "log q(z|x)"),
        (-1.0, "q", "f(x, z)"),
        (1.0, "q", "log Z(π)"),  # −(−log Z)
    ]


def test_symmetric_divergence_is_both_kls():
    def multiset(e):
        return Counter((c.coef, id(c.source), id(c.term)) for c in e.expand())

    assert multiset(S(big_pi, p)) == multiset(KL(big_pi, p) + KL(p, big_pi))


def test_densities_in_order_of_appearance():
    assert (KL(q, p) + KL(p, pi)).densities() == (q, p, pi)


@st.composite
def expressions(draw):
    n = draw(st.integers(1, 4))
    out = Expression()
    for _ in range(n):
        a, b = draw(st.sampled_from(XZ)), draw(st.sampled_from(XZ))
        c = draw(st.sampled_from([-2.0, -1.0, -0.5, 0.5, 1.0, 2.0]))
        out = out + c * (S(a, b) if draw(st.booleans()) else KL(a, b))
    return out


def _expanded(e: Expression) -> Counter:
    acc: Counter = Counter()
    for c in e.expand():
        acc[(id(c.source), id(c.term))] += c.coef
    return Counter({k: round(v, 9) for k, v in acc.items() if abs(v) > 1e-12})


@settings(derandomize=True, max_examples=60, deadline=None)
@given(expressions(), expressions(), st.sampled_from([-3.0, -0.5, 2.0]))
def test_expansion_is_linear(a, b, c):
    """expand(c·a + b) = c·expand(a) + expand(b), summand by summand."""
    lhs = _expanded(c * a + b)
    rhs: Counter = Counter()
    for k, v in _expanded(a).items():
        rhs[k] += c * v
    for k, v in _expanded(b).items():
        rhs[k] += v
    rhs = Counter({k: round(v, 9) for k, v in rhs.items() if abs(v) > 1e-9})
    assert lhs == rhs


@settings(derandomize=True, max_examples=60, deadline=None)
@given(expressions())
def test_an_expression_minus_itself_is_zero(e):
    assert (e - e).items == ()
    assert str(-(-e)) == str(e)


def test_data_density_without_encoder_is_over_x():
    assert DataDensity().variables == ("x",)
    assert [t.label for t in DataDensity().terms()] == ["log q_data(x)"]


# ----------------------------------------------------------------------------------------
# Per-variable weights: the beta-VAE and the authors' reductions
# ----------------------------------------------------------------------------------------
def _coefs(expr):
    return {(c.source.name, c.term.label): c.coef for c in expr.expand()}


def test_weights_scale_the_factors_of_one_variable():
    """KL(q, p; z×β) = E_q[-log p(x|z)] + β E_q[log q(z|x) - log N(z)] (+ the data's entropy)."""
    plain, weighted = _coefs(KL(q, p)), _coefs(KL(q, p, weights={"z": 0.25}))
    for key, c in plain.items():
        factor_z = key[1] in ("log q(z|x)", "log N(z; 0, I)")
        assert weighted[key] == (0.25 * c if factor_z else c)
    assert str(KL(q, p, weights={"z": 0.25})) == "KL(q ‖ p; z×0.25)"
    assert KL(q, p, weights={"z": 0.25}).latex() == r"\mathrm{KL}_{z \times 0.25}(q \,\|\, p)"
    # a weight of 1 is no weight: the divergences collect
    assert str(KL(q, p, weights={"z": 1}) - KL(q, p)) == "0"
    # differently weighted divergences are different divergences
    assert len((KL(q, p, weights={"z": 0.5}) + KL(q, p)).items) == 2


def test_weights_of_symmetric_divergences_apply_to_both_directions():
    e = _coefs(S(big_pi, p, weights={"z": 0.5}))
    assert e[("Π", "log q(z|x)")] == 0.5 and e[("p", "log N(z; 0, I)")] == 0.5


def test_bad_weights_are_refused_with_the_reason():
    with pytest.raises(VariableMismatchError, match="weighs the factors of 'y'"):
        KL(q, p, weights={"y": 0.5})
    with pytest.raises(ValueError, match="finite positive"):
        KL(q, p, weights={"z": 0.0})
    with pytest.raises(ValueError, match="finite positive"):
        KL(q, p, weights={"z": float("nan")})
    with pytest.raises(TypeError, match="real number"):
        KL(q, p, weights={"z": "0.5"})
    # f(x, z) of a latent EBM belongs to no single variable: its z-factors cannot be weighed
    from kldiv.errors import CompileError

    with pytest.raises(CompileError, match=r"f\(x, z\).*does not split by variable"):
        KL(q, pi, weights={"z": 0.5})

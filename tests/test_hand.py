"""``strategy=hand``: MobileNetV3-Large's pattern on a space (``space.hand_designed``), shrunk to the budget."""

from __future__ import annotations

import pytest

from xsearch.core.errors import UserError
from xsearch.search_spaces import get_space
from xsearch.search_spaces.mbv3 import SKIP, parse_option
from xsearch.strategies import STRATEGIES, Constraints, HandDesigned

BUDGETS = (3_000_000, 5_000_000, 8_000_000, 12_000_000)
MBV3_HAND = {"layer1": "k3_e3", "layer2": "k3_e3",  # 24: (k3, e4), (k3, e3)
             "layer3": "k5_e3_se", "layer4": "k5_e3_se",  # 40: (k5, e3, SE) x 2
             "layer5": "k3_e6", "layer6": "k3_e3",  # 80: (k3, e6), (k3, e2.5)
             "layer7": "k3_e6_se", "layer8": "k3_e6_se"}  # 112: (k3, e6, SE) x 2


@pytest.fixture(scope="module")
def spaces():
    return {"mbv3": get_space("mbv3"), "mbv3-half": get_space("mbv3", width_mult=0.5),
            "mbv3-dynamic": get_space("mbv3", dynamic=True), "mbv3-12": get_space("mbv3", num_layers=12),
            "nasbench_macro": get_space("nasbench_macro")}


def test_default_mbv3_pattern_is_mobilenetv3_large(spaces):
    space = spaces["mbv3"]
    assert space.hand_designed() == MBV3_HAND
    assert space.validate(space.hand_designed()) == MBV3_HAND
    assert space.flops(MBV3_HAND) == 10_080_864
    assert spaces["mbv3-dynamic"].hand_designed() == MBV3_HAND  # plain/SE variants only
    assert space.hand_designed(12_000_000) == MBV3_HAND  # under the budget: left as it is


def test_longer_stages_repeat_and_fold_the_160_blocks(spaces):
    space = spaces["mbv3-12"]  # 3 layers a stage
    assert list(space.hand_designed().values()) == [
        "k3_e3", "k3_e3", "k3_e3", "k5_e3_se", "k5_e3_se", "k5_e3_se", "k3_e6", "k3_e3", "k3_e3",
        "k3_e6_se", "k3_e6_se", "k5_e6_se"]


def test_nasbench_macro_pattern(spaces):
    space = spaces["nasbench_macro"]
    assert space.benchmark_key(space.hand_designed()) == "11111211"


@pytest.mark.parametrize("name", ["mbv3", "mbv3-half", "mbv3-dynamic", "mbv3-12", "nasbench_macro"])
def test_fits_every_budget_and_is_deterministic(spaces, name):
    space = spaces[name]
    full = space.hand_designed()
    for budget in (*BUDGETS, 20_000_000, 40_000_000, space.min_flops()):
        if budget < space.min_flops():
            with pytest.raises(UserError, match="below the smallest network"):
                space.hand_designed(budget)
            continue
        arch = space.hand_designed(budget)
        assert space.validate(arch) == arch
        assert space.flops(arch) <= budget
        assert arch == space.hand_designed(budget)
        if space.flops(full) <= budget:
            assert arch == full


def shrunk_from(original: str, option: str, choice_options: tuple[str, ...]) -> bool:
    """Whether ``option`` is ``original`` after some of e6 -> e3, kernel -> 3, SE off, or a skip where allowed."""
    if option == SKIP:
        return SKIP in choice_options
    (k0, e0, v0), (k, e, v) = parse_option(original), parse_option(option)
    return k in (k0, 3) and e in (e0, 3) and v in (v0, "")


@pytest.mark.parametrize("name", ["mbv3", "mbv3-half", "mbv3-dynamic", "mbv3-12"])
def test_shrinking_applies_only_the_listed_changes(spaces, name):
    space = spaces[name]
    full = space.hand_designed()
    for budget in range(space.min_flops(), space.flops(full) + 1, 250_000):
        arch = space.hand_designed(budget)
        assert all(shrunk_from(full[c.label], arch[c.label], c.options) for c in space.choices), arch


def test_mbv3_budgets(spaces):
    space = spaces["mbv3"]
    # thinner expansions first, then smaller kernels, SE off, and skipped layers only as the last resort
    assert space.hand_designed(8_000_000) == {**MBV3_HAND, "layer7": "k3_e3_se", "layer8": "k3_e3_se"}
    assert list(space.hand_designed(5_000_000).values()) == [
        "k3_e3", SKIP, "k3_e3", "k3_e3", "k3_e3", SKIP, "k3_e3", SKIP]


def test_too_small_budget_is_a_user_error(spaces):
    for space in spaces.values():
        with pytest.raises(UserError, match="smallest network"):
            space.hand_designed(space.min_flops() - 1)


def test_strategy_returns_the_hand_design(spaces):
    assert STRATEGIES.get("hand") is HandDesigned
    for space in spaces.values():
        for budget in (None, 8_000_000, 40_000_000):
            if budget is not None and budget < space.min_flops():
                continue
            result = HandDesigned(seed=3, show_progress=False).search(space, None, None, Constraints(budget))
            assert result.arch == space.hand_designed(budget)
            assert result.flops == space.flops(result.arch) and result.params == space.params(result.arch)
            assert result.metrics["design"] == "mobilenetv3-large" and result.history == []
            assert result.search_seconds < 5


def test_space_without_hand_design_is_a_clear_user_error():
    space = get_space("micronet")
    with pytest.raises(UserError, match="space 'micronet' has none.*mbv3, nasbench_macro"):
        HandDesigned().search(space, None, None, Constraints())

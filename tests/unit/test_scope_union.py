"""``Scope.union``: the scope a sweep takes when an alert joins it covers exactly the
orders the two cover, never more; ``None`` only when no single scope can say so."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from killswitch.core.model import Scope
from killswitch.core.orders import Side

# Each field drawn from a smaller set than the orders below: every "all" (None) has an
# order outside any named set, so an over-wide union is always seen.
_SCOPES = st.builds(
    Scope,
    symbols=st.none() | st.frozensets(st.sampled_from(["BTC", "ETH"]), min_size=1),
    sides=st.none() | st.frozensets(st.sampled_from(list(Side)), min_size=1),
    order_ids=st.none() | st.frozensets(st.sampled_from([1, 2]), min_size=1),
)
_ORDERS = list(itertools.product(["BTC", "ETH", "SOL"], [*Side, None], [1, 2, 3]))


def _covered(scope: Scope) -> set[tuple[str, Side | None, int]]:
    return {o for o in _ORDERS if scope.covers(*o)}


@given(_SCOPES, _SCOPES)
def test_a_union_covers_exactly_what_either_covers(a: Scope, b: Scope) -> None:
    united = a.union(b)
    if united is not None:
        assert _covered(united) == _covered(a) | _covered(b)
        assert united == b.union(a)


@given(_SCOPES, _SCOPES)
def test_no_union_only_when_the_field_by_field_one_would_cover_more(a: Scope, b: Scope) -> None:
    if a.union(b) is None:
        assert _covered(a.widen(b)) > _covered(a) | _covered(b)


def test_a_one_sided_kill_and_another_pair_do_not_unite() -> None:
    btc_buys = Scope(symbols=frozenset({"BTC"}), sides=frozenset({Side.BUY}))
    all_eth = Scope(symbols=frozenset({"ETH"}))
    assert btc_buys.union(all_eth) is None
    assert btc_buys.union(Scope(symbols=frozenset({"ETH"}), sides=frozenset({Side.BUY}))) == Scope(
        symbols=frozenset({"BTC", "ETH"}), sides=frozenset({Side.BUY})
    )
    assert btc_buys.union(Scope()) == Scope()

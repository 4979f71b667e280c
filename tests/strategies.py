"""Hypothesis strategies shared by the test suite."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from protocol.ids import SigningKey

seeds = st.binary(min_size=32, max_size=32)
signing_keys = seeds.map(SigningKey.from_seed)
msg_ids = st.binary(min_size=16, max_size=16)
topics = st.text(min_size=1, max_size=64)
kinds = st.text(min_size=1, max_size=64)
now_ms = st.integers(min_value=1_000_000_000_000, max_value=4_000_000_000_000)

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
    | st.binary(max_size=40)
)

plain_bodies: st.SearchStrategy[Any] = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=10) | st.integers(0, 1000), children, max_size=5)
    ),
    max_leaves=20,
)

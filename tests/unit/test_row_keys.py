"""The fetcher's view of a read's row keys: the same answers as a list of the keys."""

from __future__ import annotations

import pytest

from dispatch_aio._consume._fetcher import RowKeys

ROWS = [{"xid": 10 + i, "position": 100 + i, "payload": "{}"} for i in range(5)]
KEYS = [(10 + i, 100 + i) for i in range(5)]


def test_row_keys_answer_as_the_list_of_keys_does() -> None:
    keys = RowKeys(ROWS)
    assert len(keys) == len(KEYS)
    assert list(keys) == KEYS
    assert keys[0] == KEYS[0]
    assert keys[-1] == KEYS[-1]
    assert keys[1:3] == KEYS[1:3]
    assert keys
    assert not RowKeys([])
    with pytest.raises(IndexError):
        keys[5]

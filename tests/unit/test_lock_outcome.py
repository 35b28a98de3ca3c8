"""Job locks when etcd loses the answer to the lock transaction (a member stopping
under it while a vote moves, CI of stop 18): the transaction is tried again and a first
attempt that did land counts as the job's own, not as another job's lock."""

from __future__ import annotations

from collections.abc import Sequence

from haven.master import locks
from haven.store import MemoryStore, OutcomeUnknown
from haven.store.base import Compare, Guard, Op, TxnResult


class LosingStore(MemoryStore):
    """Applies the next ``lose`` write transactions, then raises as if the reply was
    lost."""

    lose = 0

    def txn(self, compares: Sequence[Compare], success: Sequence[Op],
            failure: Sequence[Op] = ()) -> TxnResult:
        res = super().txn(compares, success, failure)
        if self.lose and success:
            self.lose -= 1
            raise OutcomeUnknown("etcd at http://x did not answer /v3/kv/txn (reset)")
        return res


def test_a_lock_whose_answer_was_lost_is_found_to_be_ours() -> None:
    store = LosingStore()
    rev = store.put("master", b"node01")
    guard = Guard("master", store.get("master").create_revision)  # type: ignore[union-attr]
    assert rev
    store.lose = 1
    assert locks.try_acquire(store, 7, ["instance/vm1", "node/node01"], guard)
    assert locks.held(store) == {"instance/vm1": 7, "node/node01": 7}
    # Another job still cannot take them.
    assert not locks.try_acquire(store, 8, ["instance/vm1"], guard)

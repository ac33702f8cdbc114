"""Checking tokens: the verdicts, and the uses they take, judged a batch at a time.

`TokenChecker.check_many` judges the tokens presented together (the server's batch) in
one transaction and a constant number of reads: one lookup for all, the uses taken in
one conditional write per token (or one statement, on PostgreSQL), one append of audit
events. Every verdict is what the checks one by one would have said. `TokenService`
(service.py) extends this class with issuing and administration.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

from tokencli.domain import tokens
from tokencli.domain.model import AuditEvent, CheckResult, TokenRecord, TokenState
from tokencli.domain.rules import info, lacks_scopes, state_at, validate_scopes
from tokencli.service.reader import TokenReader, parse_presented


class Presented(NamedTuple):
    """A token presented for a check, and the scopes the caller requires of it."""

    text: str
    scopes: tuple[str, ...] = ()


class TokenChecker(TokenReader):
    """Check tokens; every check appends one audit event, in the transaction that takes
    its use.

    `open` needs write access (a check records its use and its event) but creates no
    database: on a missing one every well-formed token is `unknown`.
    """

    WRITES = True

    def _event(
        self, now: int, action: str, token_id: str | None, outcome: str, detail: str | None = None
    ) -> AuditEvent:
        return AuditEvent(now, action, token_id, outcome, self._source, detail)

    # -- check ---------------------------------------------------------------------------

    def check(self, text: str, scopes: Sequence[object] = ()) -> CheckResult:
        """Judge a presented token; a valid one uses up one use of a use-limited token."""
        return self.check_many([Presented(text, validate_scopes(scopes, limit=None))])[0]

    def check_many(self, presented: Sequence[Presented]) -> list[CheckResult]:
        """Judge several presented tokens in one transaction, in order.

        The verdict order is malformed, unknown, revoked, expired, used_up,
        insufficient_scope, valid. A token lacking a required scope takes no use. The
        same single-use token presented twice is valid once, and every verdict is what
        the checks one by one would have said. Each check is one audit event. The reads
        cost a constant number of queries whatever the number of tokens; taking uses is
        the store's consume_uses (on SQLite, a statement per use-limited token).
        """
        token_ids = [parse_presented(item.text) for item in presented]
        with self._store.transaction():
            now = self.now()
            known = [token_id for token_id in token_ids if token_id is not None]
            records = self._store.get_many(known) if known else {}
            verdicts: list[tuple[TokenState, TokenRecord | None]] = []
            wanted: Counter[str] = Counter()
            for item, token_id in zip(presented, token_ids, strict=True):
                record = records.get(token_id) if token_id is not None else None
                state = self._judge(item, token_id, record, now)
                if state is TokenState.UNKNOWN:
                    # A stored ID with a wrong secret: whoever holds only the ID learns
                    # nothing of that token (label, scopes, uses), here or in the trail.
                    record = None
                if (
                    state is TokenState.VALID
                    and record is not None
                    and record.uses_left is not None
                ):
                    wanted[record.id] += 1
                verdicts.append((state, record))
            granted = self._store.consume_uses(wanted, now) if wanted else {}
            results = self._hand_out_uses(verdicts, granted, now)
            self._store.record(
                [
                    self._event(now, "check", result.info.id if result.info else None, result.state)
                    for result in results
                ]
            )
        return results

    @staticmethod
    def _judge(
        item: Presented, token_id: str | None, record: TokenRecord | None, now: int
    ) -> TokenState:
        if token_id is None:
            return TokenState.MALFORMED
        if record is None or not tokens.matches(item.text, record.secret_hash):
            return TokenState.UNKNOWN
        state = state_at(record, now)
        if state is TokenState.VALID and lacks_scopes(record, item.scopes):
            return TokenState.INSUFFICIENT_SCOPE
        return state

    def _hand_out_uses(
        self,
        verdicts: list[tuple[TokenState, TokenRecord | None]],
        granted: dict[str, tuple[int, int]],
        now: int,
    ) -> list[CheckResult]:
        """Give the uses the store granted to the checks that asked, first come first.

        Each verdict is what a check one by one would have said: a check lacking a scope
        sees the uses the earlier checks of the batch left (and `used_up` if none).
        """
        if not granted and not any(
            record is not None and record.uses_left is not None for _, record in verdicts
        ):
            # The common batch: no use-limited token, so each verdict stands as judged.
            return [
                CheckResult(state, info(record, state))
                if record is not None
                else CheckResult(state)
                for state, record in verdicts
            ]
        handed: Counter[str] = Counter()
        ended: dict[str, CheckResult] = {}  # tokens an earlier check found used up (or worse)
        results = []
        for state, record in verdicts:
            if record is None:
                results.append(CheckResult(state))
                continue
            if state is TokenState.INSUFFICIENT_SCOPE and record.uses_left is not None:
                results.append(ended.get(record.id) or self._lacking(record, granted, handed))
                continue
            if state is not TokenState.VALID or record.uses_left is None:
                results.append(CheckResult(state, info(record, state)))
                continue
            count, left_after = granted.get(record.id, (0, 0))
            if handed[record.id] < count:
                uses_left = left_after + (count - 1 - handed[record.id])
                handed[record.id] += 1
                results.append(
                    CheckResult(state, info(record, state)._replace(uses_left=uses_left))
                )
                continue
            # No use left for this one: taken by an earlier check of this batch, or by
            # another process since the read (which may also have revoked it).
            fresh = self._store.get(record.id) if handed[record.id] == 0 else None
            late = state_at(fresh, now) if fresh is not None else TokenState.USED_UP
            if late is TokenState.VALID:
                late = TokenState.USED_UP
            current = fresh if fresh is not None else record._replace(uses_left=0)
            ended[record.id] = CheckResult(late, info(current, late))
            results.append(ended[record.id])
        return results

    @staticmethod
    def _lacking(
        record: TokenRecord, granted: dict[str, tuple[int, int]], handed: Counter[str]
    ) -> CheckResult:
        """The verdict on a use-limited token lacking a scope, after the uses handed out
        so far in this batch: insufficient_scope, or used_up once none is left."""
        uses_left = record.uses_left
        if handed[record.id]:
            count, left_after = granted[record.id]
            uses_left = left_after + (count - handed[record.id])
        state = TokenState.INSUFFICIENT_SCOPE
        if uses_left is not None and uses_left <= 0:
            state = TokenState.USED_UP
        return CheckResult(state, info(record, state)._replace(uses_left=uses_left))

"""Operations: long actions over many clones, run in the background with visible progress.

An operation processes its clones in batches: the plans of a batch are read in one transaction,
their volumes are built by a small pool of workers (qemu-img and file copies release the GIL),
and their outcomes are written in one transaction, so a clone is reported done only once it is
durable in the database. After a crash, interrupted operations are marked ``interrupted`` and
their clones ``failed``; ``clone retry`` finishes them.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import select

from goldfleet.bootstrap import Context
from goldfleet.db.tables import Clone, Operation, utcnow
from goldfleet.services.clones import TRANSITIONAL, execute, load_plans, record
from goldfleet.services.common import get_operation, operation_view
from goldfleet.services.views import OperationView


class Runner:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.pool = ThreadPoolExecutor(
            max_workers=max(1, ctx.settings.workers), thread_name_prefix="goldfleet-volume"
        )
        self.threads: dict[int, threading.Thread] = {}
        self.lock = threading.Lock()

    def start(self, op_id: int) -> None:
        thread = threading.Thread(
            target=self._run, args=(op_id,), name=f"goldfleet-op-{op_id}", daemon=True
        )
        with self.lock:
            self.threads[op_id] = thread
        thread.start()

    def wait(self, op_id: int, timeout: float | None = None) -> None:
        with self.lock:
            thread = self.threads.get(op_id)
        if thread is not None:
            thread.join(timeout)

    def _run(self, op_id: int) -> None:
        ctx = self.ctx
        try:
            with ctx.session() as s:
                ids = list(
                    s.scalars(
                        select(Clone.id)
                        .where(Clone.operation_id == op_id, Clone.status.in_(TRANSITIONAL))
                        .order_by(Clone.id)
                    )
                )
            size = max(1, ctx.settings.batch_size)
            for start in range(0, len(ids), size):
                with ctx.session() as s:
                    plans = load_plans(s, ids[start : start + size])
                outcomes = list(self.pool.map(lambda p: execute(ctx, p), plans))
                with ctx.session() as s:
                    done, failed = record(s, outcomes)
                    op = s.get(Operation, op_id)
                    op.done += done
                    op.failed += failed
                    s.commit()
            with ctx.session() as s:
                op = s.get(Operation, op_id)
                op.status = "done" if op.failed == 0 else "failed"
                if op.failed:
                    op.error = f"{op.failed} of {op.total} clones failed; see: goldfleet clone list"
                op.finished_at = utcnow()
                s.commit()
        except Exception as exc:  # an operation must end visibly, whatever broke
            with ctx.session() as s:
                op = s.get(Operation, op_id)
                op.status, op.error, op.finished_at = "failed", str(exc), utcnow()
                s.commit()
        finally:
            with self.lock:
                self.threads.pop(op_id, None)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def list_operations(ctx: Context, *, limit: int = 50) -> list[OperationView]:
    with ctx.session() as s:
        ops = s.scalars(select(Operation).order_by(Operation.id.desc()).limit(limit))
        return [operation_view(op) for op in ops]


def show_operation(ctx: Context, op_id: int) -> OperationView:
    with ctx.session() as s:
        return operation_view(get_operation(s, op_id))


def recover_operations(ctx: Context) -> list[str]:
    notes = []
    with ctx.session() as s:
        for op in s.scalars(select(Operation).where(Operation.status == "running")):
            op.status = "interrupted"
            op.error = (
                "the server stopped; finish its failed clones with: goldfleet clone retry --all"
            )
            op.finished_at = utcnow()
            notes.append(f"operation {op.id} ({op.kind}) interrupted")
        s.commit()
    return notes

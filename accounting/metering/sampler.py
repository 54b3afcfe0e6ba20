"""The node sampler: readings → contiguous energy intervals → spooled batches → the broker.

It owns the per-GPU baseline (the last good reading), the batch sequence number and the events
a node reports (counter resets, lost and returned GPUs, read errors). Crash safety comes from the
state travelling twice: inside every batch (`state_after`) and in `state.json`. A batch is
written before `state.json`, and on start-up the state with the highest `next_seq` wins, so a
crash between the two writes neither re-emits nor skips an interval. A restarted sampler resumes
from the last flushed readings: the counter delta then covers the downtime, so no energy is lost.
Where the transport can confirm delivery, a sent batch stays in the spool until the ledger has it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict
from enum import StrEnum
from typing import Any

from accounting.clock import US_PER_S, Clock
from accounting.errors import GpuError, GpuLost
from accounting.gpu.backend import GpuBackend, GpuInfo, GpuProcess, GpuReading, ProcessResolver
from accounting.metering.energy import interval_energy, is_counter_reset
from accounting.metering.spool import CorruptBatch, Shipment, Spool

log = logging.getLogger(__name__)

BATCH_VERSION = 1
STATE_VERSION = 1
DEFAULT_RESEND_AFTER_S = 300.0


class Delivery(StrEnum):
    """What the ledger says about a sent batch (`confirm(receipt)` answers one of these)."""

    confirmed = "confirmed"  # ingested (or found already ingested): forget it
    rejected = "rejected"  # refused as malformed: no re-send can help; set aside for an operator
    waiting = "waiting"  # no answer yet: re-send once it is overdue


def reading_to_json(reading: GpuReading) -> dict[str, Any]:
    doc = asdict(reading)
    doc["processes"] = [[p.pid, p.used_memory_bytes] for p in reading.processes]
    doc["mig"] = []  # JSON-shaped, as the spool will give it back
    return doc


def reading_from_json(doc: dict[str, Any]) -> GpuReading:
    # A baseline only needs its counter, power and time: MIG activity is not carried over.
    processes = tuple(GpuProcess(pid, mem) for pid, mem in doc.get("processes", ()))
    return GpuReading(**{**doc, "processes": processes, "mig": ()})


class Sampler:
    """Reads one node's GPUs, keeps their intervals contiguous, and spools them as batches."""

    def __init__(
        self, *, backend: GpuBackend, spool: Spool, clock: Clock, node: str, resolver: ProcessResolver | None = None,
        first_seq: int = 1,
    ) -> None:
        """`first_seq` numbers the first batch of a spool without state (see fresh_first_seq)."""
        self.backend = backend
        self.resolver = resolver  # pid → job on this node; None: processes are reported unowned
        self.spool = spool
        self.clock = clock
        self.node = node
        self._next_seq = first_seq
        self._last: dict[str, GpuReading] = {}  # baseline: where the GPU's next interval starts
        self._info: dict[str, GpuInfo] = {}
        self._lost: set[str] = set()
        self._failing: dict[str, str] = {}  # uuid → last error reported, to report changes only
        self._seen: dict[str, GpuInfo] = {}  # GPUs listed since the last flush
        self._intervals: list[dict[str, Any]] = []
        self._events: list[dict[str, Any]] = []
        self._state_dirty = False
        self._restore()

    @property
    def next_seq(self) -> int:
        return self._next_seq

    def baseline(self, uuid: str) -> GpuReading | None:
        """The reading the GPU's next interval will start from."""
        return self._last.get(uuid)

    # sampling

    def sample(self) -> int:
        """Read every GPU once; returns the number of readings taken."""
        try:
            infos = self.backend.gpus()
        except GpuError as exc:
            self._report(exc.uuid, "read-error", f"listing GPUs failed: {exc}")
            return 0
        self._failing.pop("", None)
        taken = 0
        for info in infos:
            self._info[info.uuid] = info
            self._seen[info.uuid] = info
            try:
                reading = self.backend.read(info.uuid)
            except GpuLost as exc:
                self._mark_lost(info.uuid, str(exc))
                continue
            except GpuError as exc:
                self._report(info.uuid, "read-error", f"{type(exc).__name__}: {exc}")
                continue
            taken += 1
            self._take(info.uuid, reading)
        listed = {info.uuid for info in infos}
        for uuid in self._last.keys() - listed:
            self._mark_lost(uuid, "no longer listed by the backend")
        return taken

    def _take(self, uuid: str, cur: GpuReading) -> None:
        if cur.uuid != uuid:
            self._report(uuid, "read-error", f"backend answered for {cur.uuid!r}")
            return
        if uuid in self._lost:
            self._lost.discard(uuid)
            self._add_event(uuid, "gpu-returned", "readable again", at_us=cur.timestamp_us)
        prev = self._last.get(uuid)
        if prev is None:
            self._failing.pop(uuid, None)
            self._last[uuid] = cur  # first reading: a baseline, no interval yet
            self._state_dirty = True  # energy is counted from here once this is saved
            return
        if cur.timestamp_us <= prev.timestamp_us:
            # Keep the old baseline so the next good reading's interval covers this span.
            self._report(uuid, "read-error", "reading not newer than the previous one")
            return
        self._failing.pop(uuid, None)
        energy_mj, method = interval_energy(prev, cur)
        if is_counter_reset(prev, cur):
            detail = (
                f"energy counter went from {prev.energy_mj} to {cur.energy_mj} mJ; "
                f"interval integrated from power ({method})"
            )
            self._add_event(uuid, "counter-reset", detail, at_us=cur.timestamp_us)
        self._intervals.append(
            {
                "uuid": uuid,
                "start_us": prev.timestamp_us,
                "end_us": cur.timestamp_us,
                "energy_mj": energy_mj,
                "method": method,
                "power_mw": cur.power_mw,
                "gpu_util_pct": cur.gpu_util_pct,
                "memory_util_pct": cur.memory_util_pct,
                "memory_used_bytes": cur.memory_used_bytes,
                "sm_clock_mhz": cur.sm_clock_mhz,
                "sm_active_pct": cur.sm_active_pct,
                "tensor_active_pct": cur.tensor_active_pct,
                "dram_bw_pct": cur.dram_bw_pct,
                "pids": [p.pid for p in cur.processes],
                "processes": [self._process(p) for p in cur.processes],
                "mig": [{"uuid": m.uuid, "activity_pct": m.activity_pct} for m in cur.mig],
            }
        )
        self._last[uuid] = cur

    def _process(self, process: GpuProcess) -> dict[str, Any]:
        owner = self.resolver.owner(process.pid) if self.resolver else None
        return {
            "pid": process.pid,
            "sm_pct": process.sm_util_pct,
            "job_key": owner.job_key if owner else None,
            "user": owner.user if owner else None,
        }

    def _mark_lost(self, uuid: str, detail: str) -> None:
        # The baseline stays: when the GPU returns, one interval covers the whole gap.
        if uuid not in self._lost:
            self._lost.add(uuid)
            self._add_event(uuid, "gpu-lost", detail)
            log.warning("GPU %s lost: %s", uuid, detail)

    def _report(self, uuid: str | None, kind: str, detail: str) -> None:
        """An event for a failing GPU, once per distinct failure rather than once per sample."""
        key = uuid or ""
        if self._failing.get(key) == detail:
            return
        self._failing[key] = detail
        self._add_event(uuid, kind, detail)
        log.warning("GPU %s: %s", uuid or "(backend)", detail)

    def _add_event(
        self, uuid: str | None, kind: str, detail: str, *, at_us: int | None = None
    ) -> None:
        at_us = self.clock.now_us() if at_us is None else at_us
        self._events.append({"uuid": uuid, "at_us": at_us, "kind": kind, "detail": detail})

    # batching

    def flush(self) -> dict[str, Any] | None:
        """Spool the pending intervals and events as one batch; None when there is nothing.

        With nothing to send, new baselines (a GPU's first reading) still go to state.json, so
        a crash before the first batch does not move the start of that GPU's accounting.
        """
        if not self._intervals and not self._events:
            self._save_state()
            return None
        seq = self._next_seq
        state_after = self._state(next_seq=seq + 1)
        batch = {
            "version": BATCH_VERSION,
            "node": self.node,
            "seq": seq,
            "created_us": self.clock.now_us(),
            "gpus": self._batch_gpus(),
            "intervals": self._intervals,
            "events": self._events,
            "state_after": state_after,
        }
        try:
            self.spool.put(batch)
        except OSError:
            # A failed directory fsync can follow a completed rename: the batch is there.
            if seq not in self.spool.pending():
                raise  # nothing written; the intervals stay pending for the next flush
            log.warning("spooled batch %d written but its durability is unconfirmed", seq)
        # The batch is on disk and carries state_after: from here on it is the truth.
        self._next_seq = seq + 1
        self._intervals, self._events, self._seen = [], [], {}
        self._state_dirty = True
        self._save_state()
        return batch

    def ship(self, send: Callable[[dict[str, Any]], Any], *, confirm: Callable[[str], Delivery] | None = None,
             resend_after_s: float = DEFAULT_RESEND_AFTER_S) -> int:
        """Send spooled batches oldest first; returns how many were sent (re-sends included).

        Without `confirm`, a sent batch is removed at once: the transport is trusted with it. With
        `confirm`, `send` returns a receipt, and the batch waits in the spool's `sent/` until
        `confirm(receipt)` says the ledger has it; one with no answer `resend_after_s` after its
        last send is sent again (ingest counts a (node, seq) once, so re-sending is harmless).
        """
        # Removing a batch whose state_after is newer than state.json would let a crash
        # roll the sampler back, so state.json must be current first.
        if not self._save_state():
            return 0
        shipped = 0 if confirm is None else self._settle(send, confirm, resend_after_s)
        for seq in self.spool.pending():
            try:
                batch = self.spool.load(seq)
            except CorruptBatch:
                continue  # quarantined and logged by the spool
            try:
                receipt = send(batch)
            except Exception as exc:  # any transport failure: keep the batch for next time
                log.warning("shipping batch %d failed, %d left in the spool: %s", seq, self.spool.depth(), exc)
                break
            if confirm is None:
                self.spool.remove(seq)
            else:
                self.spool.mark_sent(seq, receipt=str(receipt), sent_us=self.clock.now_us())
            shipped += 1
        return shipped

    def _settle(self, send: Callable[[dict[str, Any]], Any], confirm: Callable[[str], Delivery],
                resend_after_s: float) -> int:
        """Ask about every batch awaiting confirmation: forget the confirmed, set the rejected
        aside, send the overdue again. Returns the number re-sent. When the ledger cannot be
        asked, everything stays for the next round."""
        resent = 0
        for shipment in self.spool.awaiting():
            try:
                delivery = Delivery.waiting if shipment.receipt is None else Delivery(confirm(shipment.receipt))
            except Exception as exc:
                log.warning("cannot check sent batches (%s); %d wait for the next round",
                            exc, len(self.spool.awaiting()))
                return resent
            if delivery is Delivery.confirmed:
                self.spool.confirmed(shipment.seq)
            elif delivery is Delivery.rejected:
                moved_to = self.spool.reject(shipment.seq)
                log.error("batch %d was REJECTED by the ledger as malformed and will not be sent again; "
                          "moved to %s for an operator (the ingest worker's log says why)", shipment.seq, moved_to)
            elif self.clock.now_us() - shipment.sent_us >= resend_after_s * US_PER_S:
                if not self._resend(send, shipment):
                    return resent
                resent += 1
        return resent

    def _resend(self, send: Callable[[dict[str, Any]], Any], shipment: Shipment) -> bool:
        try:
            batch = self.spool.load(shipment.seq, sent=True)
        except CorruptBatch:
            return True  # quarantined and logged by the spool
        try:
            receipt = send(batch)
        except Exception as exc:
            log.warning("re-sending batch %d failed (will retry): %s", shipment.seq, exc)
            return False
        now_us = self.clock.now_us()
        self.spool.mark_sent(shipment.seq, receipt=str(receipt), sent_us=now_us)
        log.warning("batch %d had no confirmation %.0f s after send %d (receipt %s); re-sent as %s",
                    shipment.seq, (now_us - shipment.sent_us) / US_PER_S, shipment.sends, shipment.receipt, receipt)
        return True

    def _batch_gpus(self) -> list[dict[str, Any]]:
        uuids = set(self._seen)
        uuids |= {i["uuid"] for i in self._intervals}
        uuids |= {e["uuid"] for e in self._events if e["uuid"] is not None}
        infos = [self._info[u] for u in uuids if u in self._info]
        infos.sort(key=lambda i: (i.index, i.uuid))
        described = []
        for info in infos:
            described.append({"uuid": info.uuid, "name": info.name, "index": info.index})
            for mig in self._instances(info.uuid):
                described.append({"uuid": mig.uuid, "name": mig.name, "index": mig.index,
                                  "parent_uuid": info.uuid, "mig_profile": mig.mig_profile,
                                  "mig_slices": mig.mig_slices})
        return described

    def _instances(self, uuid: str) -> list[GpuInfo]:
        lister = getattr(self.backend, "mig_instances", None)
        if lister is None:
            return []
        try:
            return lister(uuid)
        except GpuError as exc:
            self._report(uuid, "read-error", f"listing MIG instances failed: {exc}")
            return []

    # state

    def _state(self, *, next_seq: int) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "node": self.node,
            "next_seq": next_seq,
            "readings": {u: reading_to_json(r) for u, r in sorted(self._last.items())},
            "gpus": {u: asdict(i) for u, i in sorted(self._info.items())},
            "lost": sorted(self._lost),
        }

    def _save_state(self) -> bool:
        if not self._state_dirty:
            return True
        if self._intervals:
            # Baselines have moved past intervals no batch holds yet (a flush failed): saving them
            # would lose those intervals on a crash. Wait for the next successful flush.
            return False
        try:
            self.spool.write_state(self._state(next_seq=self._next_seq))
        except OSError as exc:
            log.warning("writing sampler state failed (will retry): %s", exc)
            return False
        self._state_dirty = False
        return True

    def _restore(self) -> None:
        state = self.spool.read_state()
        newest = self._newest_batch_state()
        from_batch = newest is not None and (
            state is None or newest["next_seq"] > state["next_seq"]
        )
        if from_batch:
            state = newest
        if state is None:
            return
        if state.get("node") != self.node:
            log.warning(
                "spool state belongs to node %r, not %r; continuing from it",
                state.get("node"),
                self.node,
            )
        self._next_seq = state["next_seq"]
        self._last = {u: reading_from_json(r) for u, r in state["readings"].items()}
        self._info = {u: GpuInfo(**i) for u, i in state.get("gpus", {}).items()}
        self._lost = set(state.get("lost", ()))
        # Batches on disk beyond the state (only if state.json was edited by hand) stay intact.
        on_disk = self.spool.pending() + [s.seq for s in self.spool.awaiting()]
        if on_disk and max(on_disk) >= self._next_seq:
            log.warning("spool holds batch %d beyond state seq %d", max(on_disk), self._next_seq)
            self._next_seq = max(on_disk) + 1
        if from_batch:
            # state.json lags the newest batch (a crash between the two writes): catch it up
            # before that batch can be shipped and removed.
            self._state_dirty = True
            self._save_state()

    def _newest_batch_state(self) -> dict[str, Any] | None:
        for seq in reversed(self.spool.pending()):
            try:
                batch = self.spool.load(seq)
            except CorruptBatch:
                continue
            state = batch.get("state_after")
            if isinstance(state, dict):
                return state
        return None

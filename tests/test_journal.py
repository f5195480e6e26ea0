"""The run journal: what reaches ``run.json`` and when, whatever the number of tasks."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from corral.core.journal import Journal


def _run_json(journal: Journal) -> dict:
    return json.loads((journal.dir / "run.json").read_text(encoding="utf-8"))


class _Seen:
    """A field value that notes which thread serialised it (the journal writes it with ``str``)."""

    def __init__(self) -> None:
        self.threads: set[str] = set()

    def __str__(self) -> str:
        self.threads.add(threading.current_thread().name)
        return "seen"


def test_a_task_update_is_serialised_off_the_callers_thread_and_coalesced(tmp_path: Path) -> None:
    """At 200 tasks, serialising the whole state at each task update (on the event loop) took two
    thirds of the loop: an update only changes the state, the writer thread writes it."""
    journal = Journal(tmp_path, "r1")
    journal.create()
    seen = _Seen()
    try:
        journal.update_task("t0", status="running", marker=seen)
        for i in range(1, 300):
            journal.update_task(f"t{i}", status="running")
        deadline = time.monotonic() + 10
        while len(_run_json(journal)["tasks"]) < 300 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(_run_json(journal)["tasks"]) == 300
        assert seen.threads == {"corral-journal"}
        assert _run_json(journal)["tasks"]["t0"] == {"status": "running", "marker": "seen"}
    finally:
        journal.close()


def _switches(thread: threading.Thread) -> int:
    """How many times ``thread`` went to sleep and was woken (the kernel's count)."""
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("voluntary_ctxt_switches")))


def test_updates_in_the_writers_pause_do_not_wake_it(tmp_path: Path) -> None:
    """Between two snapshots the writer pauses; each update used to wake it (only to send it back
    to sleep): a thread switch per task update, on the GIL the event loop needs."""
    journal = Journal(tmp_path, "r5")
    journal.create()
    try:
        writer = journal._writer
        assert writer is not None
        journal.update_task("t0", status="running")
        deadline = time.monotonic() + 10
        while not (journal.dir / "run.json").read_text().count('"t0"') and time.monotonic() < deadline:
            time.sleep(0.005)
        before = _switches(writer)
        for i in range(3000):
            journal.update_task(f"t{i % 20}", status="running", n=i)
            if i % 100 == 0:
                time.sleep(0)  # (lets the writer run, as an event loop's awaits do)
        assert _switches(writer) - before < 20
    finally:
        journal.close()
    assert _run_json(journal)["tasks"]["t19"]["n"] == 2999


def test_a_snapshot_waits_longer_the_longer_the_last_took(tmp_path: Path) -> None:
    """The pause between two snapshots grows with what one costs: a run of hundreds of tasks spends
    a bounded share of a core on ``run.json``, not one that grows with its size."""
    journal = Journal(tmp_path, "r6")
    journal.create()
    try:
        for i in range(5000):
            journal.update_task(f"t{i}", status="running", files=[f"f{j}.txt" for j in range(10)])
        start = time.monotonic()
        journal.write_snapshot()
        took = time.monotonic() - start
        dumped = journal._dumped
        end = time.monotonic() + 20 * took
        while time.monotonic() < end:
            journal.update_task("t0", status="running", n=time.monotonic())
            time.sleep(0.001)
        # at most one snapshot every SNAPSHOT_DUTY (40) times its time: one in the window, where a
        # fixed 0.15 s pause let through three or more
        assert journal._dumped - dumped <= 1, (journal._dumped - dumped, took)
    finally:
        journal.close()


def test_the_last_state_is_on_disk_when_the_journal_closes(tmp_path: Path) -> None:
    journal = Journal(tmp_path, "r2")
    journal.create()
    for i in range(500):
        journal.update_task(f"t{i % 50}", status="running", n=i)
    journal.update_task("t7", status="succeeded")
    journal.close()
    data = _run_json(journal)
    assert data["tasks"]["t7"] == {"status": "succeeded", "n": 457}
    assert data["tasks"]["t49"]["n"] == 499 and len(data["tasks"]) == 50
    assert not list(journal.dir.glob(".*.tmp"))


def test_the_runs_own_fields_are_on_disk_when_update_returns(tmp_path: Path) -> None:
    """Killed right after the run recorded its kept branches (or its pid, or its landing), the
    journal on disk says so, with the task updates made before."""
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from corral.core.journal import Journal
        j = Journal(Path({str(tmp_path)!r}), "r3")
        j.create()
        j.update_task("a", status="succeeded", branch="corral/r3/a")
        j.update(kept_branches=["corral/r3/a"], landed=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert res.returncode == -signal.SIGKILL, res.stderr
    data = json.loads((tmp_path / "runs" / "r3" / "run.json").read_text(encoding="utf-8"))
    assert data["kept_branches"] == ["corral/r3/a"] and data["landed"] is True
    assert data["tasks"]["a"] == {"status": "succeeded", "branch": "corral/r3/a"}


def test_a_run_whose_folder_was_deleted_goes_on(tmp_path: Path) -> None:
    """The journal's folder deleted during the run: updates and the end of the run do not raise
    (the run's agents and its cleanup must go on)."""
    import shutil

    journal = Journal(tmp_path, "r4")
    journal.create()
    shutil.rmtree(journal.dir)
    journal.update_task("a", status="running")
    journal.update(phase="review")
    journal.close()
    assert not journal.dir.exists()


def test_every_event_is_written_as_dataclasses_asdict_makes_it() -> None:
    """``to_dict`` copies plain fields shallowly (the lines of an output batch are one list copy, not
    a visit of each line): the data is the same as ``dataclasses.asdict``'s for every event type,
    dataclasses inside ``Any`` fields included, and owns its lists."""
    import dataclasses
    import inspect

    from corral.core import events

    @dataclasses.dataclass
    class Inner:
        files: list[str]
        ok: bool

    samples = {"str": "x", "int": 3, "float": 1.5, "bool": True, "list[str]": ["a", "b"],
               "dict[str, str]": {"k": "v"}, "dict[str, list[str]]": {"k": ["v"]}, "bytes": b"y\n"}
    deep = {"items": [{"name": "t", "inner": Inner(["f"], True)}]}
    classes = [c for c in vars(events).values()
               if inspect.isclass(c) and issubclass(c, events.Event) and c is not events.Event]
    assert len(classes) > 15
    for cls in classes:
        kwargs = {}
        for f in dataclasses.fields(cls):
            kind = str(f.type).removesuffix(" | None")
            kwargs[f.name] = samples[kind] if kind in samples else (
                [deep, Inner(["g"], False)] if kind.startswith("list[") else deep if kind.startswith("dict[") else Inner(["h"], True))
        ev = cls(**kwargs)
        data = ev.to_dict()
        want = {"type": cls.TYPE, **dataclasses.asdict(ev)}
        if issubclass(cls, events.Output):  # (JSON has no bytes: a block that came as bytes goes as its text)
            del want["data"]
        assert data == want, cls.__name__
        json.dumps(data)
        for name, value in data.items():
            if isinstance(value, (list, dict)):
                assert value is not getattr(ev, name), (cls.__name__, name)

"""A text agent's flood on its way from the pipe: written to the log as read, sent on as blocks of
lines that only a consumer needing every line splits (the headless printer, ``--json``, a lossless
client); a pane, a paced view and a late client get the newest lines they show."""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path

import anyio

from conftest import git
from test_engine_git import run_plan

from corral.core.events import TaskOutput, TaskStatus, VerifyOutput, tail_lines, wire_dict
from corral.core import procs
from corral.core.procs import MAX_DISPLAY_LINE, READ_PAUSE, Supervised, clean_line
from corral.core.server.host import RunHost
from corral.tui.headless import LineRenderer

RUN = "20260101-000000-abcd"


def _read(tmp_path: Path, script: str | list[str], hook: str, then=None) -> tuple[list, bytes]:
    """What ``Supervised``'s ``hook`` (``on_text`` or ``on_data``) got from ``sh -c script`` (or the
    command ``script``), each block passed on to ``then`` too, and its log."""
    blocks: list = []
    log = tmp_path / "out.log"

    def got(block) -> None:
        blocks.append(block)
        if then is not None:
            then(block)

    async def main() -> None:
        argv = ["sh", "-c", script] if isinstance(script, str) else script
        await Supervised(argv, cwd=tmp_path, log_path=log, timeout=60, **{hook: got}).run()

    anyio.run(main)
    return blocks, log.read_bytes()


def _read_as_text(tmp_path: Path, script: str | list[str], on_text=None) -> tuple[list[str], bytes]:
    """What ``on_text`` got from ``sh -c script`` (or the command ``script``), and its log."""
    return _read(tmp_path, script, "on_text", on_text)


def test_a_flood_comes_as_blocks_of_whole_lines_and_its_log_is_every_byte(tmp_path: Path) -> None:
    blocks, log = _read_as_text(tmp_path, "yes 0123456789abcdef | head -n 50000; printf 'last, no newline'")
    assert all(b.endswith("\n") for b in blocks) and len(blocks) < 1000  # one per read, not per line
    assert "".join(blocks) == "0123456789abcdef\n" * 50000 + "last, no newline\n"
    assert log == b"0123456789abcdef\n" * 50000 + b"last, no newline"


def test_a_flood_is_read_in_chunks_larger_than_the_pipe_it_started_with(tmp_path: Path) -> None:
    """A command that writes faster than corral reads gets a larger pipe: it runs ahead while corral
    is busy, and its output comes in fewer, larger reads than the kernel's 64 KiB pipe allows."""
    blocks, log = _read_as_text(tmp_path, "yes 0123456789abcdef | head -n 500000")
    assert log == b"0123456789abcdef\n" * 500000
    assert "".join(blocks) == "0123456789abcdef\n" * 500000
    # (a block is what a read got, after the part of a line the read before left)
    assert max(map(len, blocks)) > 64 * 1024 + 17
    assert len(blocks) < len(log) // (64 * 1024)


def test_pipes_grow_only_within_corrals_budget_and_give_it_back(tmp_path: Path, monkeypatch) -> None:
    """The kernel counts every pipe's size against the user's limit: past corral's budget a pipe
    keeps its 64 KiB (the flood still comes whole), and a closed one's growth is given back."""
    assert procs._pipes_grown == 0
    _read_as_text(tmp_path, "yes 0123456789abcdef | head -n 200000")
    assert procs._pipes_grown == 0
    monkeypatch.setattr(procs, "PIPE_BUDGET", 0)
    blocks, log = _read_as_text(tmp_path, "yes 0123456789abcdef | head -n 200000")
    assert log.endswith(b"0123456789abcdef\n" * 200000) and "".join(blocks) == "0123456789abcdef\n" * 200000
    assert max(map(len, blocks)) <= 64 * 1024 + 17


_SMALL_WRITES = """
import os, time
for i in range(3000):
    os.write(1, b"line %d\\n" % i)
    until = time.perf_counter() + 0.00005
    while time.perf_counter() < until:
        pass
"""


def test_small_writes_in_quick_succession_are_read_together_not_one_by_one(tmp_path: Path) -> None:
    """A command writing a line at a time, 20,000 a second: once a read emptied the pipe, the next
    waits READ_PAUSE, so what it wrote meanwhile comes as one block (not a wake-up, an event and a
    log write per line); nothing is lost or reordered."""
    stamps: list[float] = []
    blocks, log = _read_as_text(tmp_path, [sys.executable, "-c", _SMALL_WRITES],
                                on_text=lambda block: stamps.append(time.monotonic()))
    want = "".join(f"line {i}\n" for i in range(3000))
    assert "".join(blocks) == want and log == want.encode()
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert min(gaps) >= READ_PAUSE * 0.9, sorted(gaps)[:5]
    assert len(blocks) < 3000 // 2


_FIRST_THEN_WAIT = """
import os, time
os.write(1, b"first\\n")
deadline = time.monotonic() + 30
while not os.path.exists("go") and time.monotonic() < deadline:
    time.sleep(0.005)
os.write(1, b"went on\\n" if os.path.exists("go") else b"nobody saw the first line\\n")
"""


def test_the_first_line_comes_without_waiting_for_more(tmp_path: Path) -> None:
    """A line is handed on when read: the command writes its second line only once the first was
    seen (it waits for a file the consumer makes on seeing it)."""
    blocks, _log = _read_as_text(tmp_path, [sys.executable, "-c", _FIRST_THEN_WAIT],
                                 on_text=lambda block: (tmp_path / "go").touch())
    assert "".join(blocks) == "first\nwent on\n"


def test_blocks_are_cleaned_and_cut_as_lines_are(tmp_path: Path) -> None:
    """Escapes, progress redraws, tabs, bad UTF-8 and over-long lines in a block: each line as
    :func:`clean_line` and the display limit make it, the log untouched."""
    raw = (b"plain\n\x1b[1mbold\x1b[0m\n10%\r50%\r100%\n\tx\n\xff\xfe\n" + b"y" * (MAX_DISPLAY_LINE + 10) + b"\n"
           + "é ok\n".encode())
    printed = tmp_path / "printed"
    printed.write_bytes(raw)
    blocks, log = _read_as_text(tmp_path, f"cat {printed}")
    assert log == raw
    want = [clean_line(line) for line in raw.split(b"\n")[:-1]]
    want[5] = "y" * MAX_DISPLAY_LINE + " [...]"
    assert "".join(blocks).split("\n")[:-1] == want
    assert want[1:4] == ["bold", "100%", "    x"]


def test_a_control_byte_anywhere_in_a_large_block_is_cleaned() -> None:
    """Each control byte (NUL, tab, CR, ESC, DEL and the rest) or a bad UTF-8 byte, alone in a read's
    worth of plain lines, at its start, in its middle or at its end: the block is cleaned as its
    lines are."""
    line = b"x" * 79 + b"\n"
    block = line * (procs.CHUNK // len(line))
    assert procs.clean_block(block, MAX_DISPLAY_LINE) == block.decode()
    for byte in [*range(0, 10), *range(11, 32), 127, 0xFF]:  # (and a byte that is no UTF-8)
        for at in (0, len(block) // 2 + 3, len(block) - 2):
            raw = block[:at] + bytes([byte]) + block[at + 1 :]
            want = "".join(clean_line(line) + "\n" for line in raw.split(b"\n")[:-1])
            assert procs.clean_block(raw, MAX_DISPLAY_LINE) == want, (byte, at)
            assert procs.clean_lines(raw) == want.split("\n")[:-1], (byte, at)


_LINE_IN_TWO_WRITES = """
import os, time
os.write(1, (b"y" * 79 + b"\\n") * 700 + b"the line begun, ")
deadline = time.monotonic() + 30
while not os.path.exists("go") and time.monotonic() < deadline:
    time.sleep(0.005)
os.write(1, b"\\x1b[1mended\\x1b[0m in the next read\\nand one more\\n")
"""


def test_a_line_begun_in_one_read_and_ended_in_the_next_comes_whole(tmp_path: Path) -> None:
    """The part of a line a read left is joined to the next read's (cleaned as one line); the log
    has the bytes as written. (The first write fits in the pipe: it is read whole before the second
    is made, not in two reads racing it.)"""
    blocks, log = _read_as_text(tmp_path, [sys.executable, "-c", _LINE_IN_TWO_WRITES],
                                on_text=lambda block: (tmp_path / "go").touch())
    assert "".join(blocks[:-1]) == ("y" * 79 + "\n") * 700
    assert blocks[-1] == "the line begun, ended in the next read\nand one more\n"
    assert log == (b"y" * 79 + b"\n") * 700 + b"the line begun, \x1b[1mended\x1b[0m in the next read\nand one more\n"


def _flood(host: RunHost, blocks: int, per_block: int) -> list[str]:
    """Blocks of numbered lines emitted as a text agent's output; every line, in order."""
    every = []
    for b in range(blocks):
        lines = [f"line {b * per_block + i}" for i in range(per_block)]
        every += lines
        host.bus.emit(TaskOutput(run=RUN, task="a", text="".join(line + "\n" for line in lines)))
    return every


def test_a_lossless_client_gets_every_line_of_blocks_and_others_their_tail() -> None:
    """Headless (lossless): every line, in order, the blocks joined into one; a paced view: the
    newest ``batch_tail`` after a line counting the skipped; a late client: the host's tail."""

    async def main() -> None:
        host = RunHost(RUN, tail=250)
        _s, lossless = host.attach(lossless=True)
        _s, paced = host.attach(2000, pace=3600, batch_tail=3)
        host.bus.emit(TaskOutput(run=RUN, task="a", lines=[]))
        host.bus.emit(TaskStatus(run=RUN, task="a", status="running"))
        assert [ev.type for ev in await lossless.take()] == ["task_status"]  # nothing said, nothing sent
        host.bus.emit(TaskOutput(run=RUN, task="a", lines=["before"]))
        every = ["before", *_flood(host, 40, 100)]
        host.bus.emit(TaskStatus(run=RUN, task="a", status="succeeded"))
        got = [ev for ev in await lossless.take() if isinstance(ev, TaskOutput)]
        assert [line for ev in got for line in ev.all_lines()] == every
        assert len(got) == 1 and got[0].text == "".join(line + "\n" for line in every)
        cut = [ev for ev in await paced.take() if isinstance(ev, TaskOutput)]
        assert [ev.lines for ev in cut] == [[f"[corral: {len(every) - 3} line(s) not shown here; the log on disk "
                                             "has them]", *every[-3:]]]
        late = [ev for ev in host.snapshot() if isinstance(ev, TaskOutput)]
        assert [ev.all_lines() for ev in late] == [every[-250:]]
        assert [ev.all_lines() for ev in host.snapshot(tail=5) if isinstance(ev, TaskOutput)] == [every[-5:]]
        host.detach(lossless)
        host.detach(paced)

    anyio.run(main)


def test_a_host_no_client_can_join_late_keeps_no_output() -> None:
    """A headless run's host (tail 0: its renderers attach at its start, nothing attaches later)
    keeps no copy of a flood for late clients; its lossless feed still gets every line."""

    async def main() -> None:
        host = RunHost(RUN, tail=0)
        _s, lossless = host.attach(lossless=True)
        every = _flood(host, 50, 100)
        got = [ev for ev in await lossless.take() if isinstance(ev, TaskOutput)]
        assert [line for ev in got for line in ev.all_lines()] == every
        assert not [ev for ev in host.snapshot() if isinstance(ev, TaskOutput)]
        assert host._tails == {}
        host.detach(lossless)

    anyio.run(main)


def test_headless_prints_every_line_of_a_flood_and_json_one_object_each(repo, tmp_path, wt_root) -> None:
    script = "yes abc | head -n 30000; printf 'x\\033[1my\\n'"
    res = run_plan(repo, tmp_path, wt_root, [("a", script)], "--approve", "none")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    shown = [line for line in res.stdout.splitlines() if line.startswith("[a] ")]
    assert shown == ["[a] abc"] * 30000 + ["[a] xy"]
    runs = Path(git(repo, "rev-parse", "--git-common-dir"))
    run_dir = sorted(((runs if runs.is_absolute() else repo / runs) / "corral" / "runs").iterdir())[-1]
    assert (run_dir / "logs" / "a.log").read_bytes().endswith(b"abc\n" * 30000 + b"x\x1b[1my\n")

    res = run_plan(repo, tmp_path, wt_root, [("a", script)], "--approve", "none", "--json")
    assert res.returncode == 0, res.stderr
    events = [json.loads(line) for line in res.stdout.splitlines()]
    out = [e for e in events if e["type"] == "output" and e["task"] == "a" and e["stream"] == "agent"]
    assert [e["line"] for e in out] == ["abc"] * 30000 + ["xy"]
    assert all("text" not in e and "lines" not in e for e in out)


def test_headless_cleans_control_bytes_bad_utf8_and_long_lines_of_a_flood_as_lines(repo, tmp_path, wt_root) -> None:
    """A flood then a block that needs cleaning (a tab, a CR, a bad byte, a line over the display
    limit): printed and sent as JSON as :func:`clean_line` makes each line; the log has every byte.
    (The long line comes in one write, from its start: no read ends in it past the limit.)"""
    (tmp_path / "long.txt").write_bytes(b"y" * (MAX_DISPLAY_LINE + 5) + b"\n")
    script = f"yes abc | head -n 20000; printf 'tab\\there\\r\\nbad \\377 byte\\n'; cat {tmp_path / 'long.txt'}"
    want = ["abc"] * 20000 + ["tab    here", "bad \ufffd byte", "y" * MAX_DISPLAY_LINE + " [...]"]
    res = run_plan(repo, tmp_path, wt_root, [("a", script)], "--approve", "none")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    assert [line for line in res.stdout.splitlines() if line.startswith("[a] ")] == ["[a] " + w for w in want]
    runs = Path(git(repo, "rev-parse", "--git-common-dir"))
    run_dir = sorted(((runs if runs.is_absolute() else repo / runs) / "corral" / "runs").iterdir())[-1]
    assert (run_dir / "logs" / "a.log").read_bytes() == (b"abc\n" * 20000 + b"tab\there\r\nbad \xff byte\n"
                                                         + b"y" * (MAX_DISPLAY_LINE + 5) + b"\n")
    res = run_plan(repo, tmp_path, wt_root, [("a", script)], "--approve", "none", "--json")
    assert res.returncode == 0, res.stderr
    events = [json.loads(line) for line in res.stdout.splitlines()]
    assert [e["line"] for e in events if e["type"] == "output" and e["task"] == "a" and e["stream"] == "agent"] == want


def test_tail_lines_splits_off_only_the_last_lines() -> None:
    assert tail_lines("a\nb\nc\n", 2) == ["b", "c"]
    assert tail_lines("a\nb\nc\n", 9) == ["a", "b", "c"]
    assert tail_lines("a\n\nb\n", 2) == ["", "b"]
    assert tail_lines("\n", 1) == [""]
    assert tail_lines("", 3) == [] and tail_lines("a\n", 0) == []


def test_the_headless_printer_writes_a_block_as_its_lines_prefixed_in_order() -> None:
    """Through a byte buffer (a terminal's stdout: line-buffered) and without one: the same text,
    each line prefixed, what came before it first, nothing left unwritten on a terminal."""
    def events(on_tty: bool) -> list:
        return [TaskOutput(task="a", text="one\nzwei é\n\nthree\n"), VerifyOutput(lines=["v1", "v2"])]

    want = "before\n[a] one\n[a] zwei é\n[a] \n[a] three\n[verify] v1\n[verify] v2\n"
    assert _printed(events) == (want, want)


def _printed(events) -> tuple[str, str]:
    """What a headless printer wrote of ``events(on_tty)`` after a line of its own, through a byte
    buffer (a terminal's stdout: line-buffered) and without one."""
    raw = io.BytesIO()
    tty = io.TextIOWrapper(raw, encoding="utf-8", line_buffering=True)
    plain = io.StringIO()
    for out in (tty, plain):
        render = LineRenderer(out)
        out.write("before\n")
        for ev in events(out is tty):
            render(ev)
    return raw.getvalue().decode(), plain.getvalue()


def _read_as_data(tmp_path: Path, script: str | list[str], on_data=None) -> tuple[list[bytes], bytes]:
    """What ``on_data`` got from ``sh -c script`` (or the command ``script``), and its log."""
    return _read(tmp_path, script, "on_data", on_data)


def test_a_plain_flood_comes_as_the_bytes_read_and_a_dirty_block_as_its_cleaned_text(tmp_path: Path) -> None:
    """``on_data``: blocks of whole lines in UTF-8, the plain ones the very bytes read (a flood is
    neither decoded nor copied on its way to the printer and the log), the others as
    :func:`clean_block` makes their text; a last line without a newline gets one."""
    blocks, log = _read_as_data(tmp_path, "yes 0123456789abcdef | head -n 50000; printf 'last, no newline'")
    assert all(type(b) is bytes and b.endswith(b"\n") for b in blocks) and len(blocks) < 1000
    assert b"".join(blocks) == b"0123456789abcdef\n" * 50000 + b"last, no newline\n"
    assert log == b"0123456789abcdef\n" * 50000 + b"last, no newline"

    raw = (b"plain\n\x1b[1mbold\x1b[0m\n10%\r50%\r100%\n\tx\n\xff\xfe\n" + b"y" * (MAX_DISPLAY_LINE + 10) + b"\n"
           + "é ok\n".encode())
    (tmp_path / "printed").write_bytes(raw)
    (tmp_path / "second").mkdir()
    blocks, log = _read_as_data(tmp_path / "second", f"cat {tmp_path / 'printed'}")
    assert log == raw
    assert b"".join(blocks) == procs.clean_block(raw, MAX_DISPLAY_LINE).encode()
    assert b"".join(blocks).split(b"\n")[1:4] == [b"bold", b"100%", b"    x"]


def test_clean_data_is_the_block_itself_when_plain_and_clean_block_in_utf8_when_not() -> None:
    """Each control byte, a bad UTF-8 byte or a line over the limit, alone in a read's worth of plain
    lines: the bytes :func:`clean_block` would print; a plain block, ASCII or not, is handed on as it
    is (the same object: no copy)."""
    line = b"x" * 79 + b"\n"
    block = line * (procs.CHUNK // len(line))
    assert procs.clean_data(block, MAX_DISPLAY_LINE) is block
    for byte in [*range(0, 10), *range(11, 32), 127, 0xFF]:
        for at in (0, len(block) // 2 + 3, len(block) - 2):
            raw = block[:at] + bytes([byte]) + block[at + 1 :]
            assert procs.clean_data(raw, MAX_DISPLAY_LINE) == procs.clean_block(raw, MAX_DISPLAY_LINE).encode(), (byte, at)
    utf8 = block + "zwei é\n".encode()
    assert procs.clean_data(utf8, MAX_DISPLAY_LINE) is utf8
    long = block + b"y" * (MAX_DISPLAY_LINE + 1) + b"\n"
    assert procs.clean_data(long, MAX_DISPLAY_LINE) == block + b"y" * MAX_DISPLAY_LINE + b" [...]\n"


def test_a_line_begun_in_one_read_and_ended_in_the_next_comes_whole_as_bytes(tmp_path: Path) -> None:
    blocks, log = _read_as_data(tmp_path, [sys.executable, "-c", _LINE_IN_TWO_WRITES],
                                on_data=lambda block: (tmp_path / "go").touch())
    assert b"".join(blocks[:-1]) == (b"y" * 79 + b"\n") * 700
    assert blocks[-1] == b"the line begun, ended in the next read\nand one more\n"
    assert log == (b"y" * 79 + b"\n") * 700 + b"the line begun, \x1b[1mended\x1b[0m in the next read\nand one more\n"


def test_the_headless_printer_writes_a_block_of_bytes_prefixed_without_decoding_it() -> None:
    """A block that came as bytes reaches a UTF-8 stdout's buffer prefixed line by line and is not
    decoded on the way (its ``text`` stays empty); without a byte buffer it is printed as text."""
    made: dict[bool, TaskOutput] = {}

    def events(on_tty: bool) -> list:
        made[on_tty] = TaskOutput(task="a", data="one\nzwei é\n\nthree\n".encode())
        return [made[on_tty], TaskOutput(task="b", data=b"x\n"), VerifyOutput(data=b"v1\nv2\n")]

    want = "before\n[a] one\n[a] zwei é\n[a] \n[a] three\n[b] x\n[verify] v1\n[verify] v2\n"
    assert _printed(events) == (want, want)
    assert made[True].text == "" and made[False].text == "one\nzwei é\n\nthree\n"


def test_blocks_of_bytes_reach_a_lossless_client_undecoded_and_json_as_lines() -> None:
    """A lossless feed hands on a block of bytes as the event it is (one alone) or the blocks of one
    pane joined as bytes; none is decoded on the way. As JSON (``--json``, the socket) it is lines."""

    async def main() -> None:
        host = RunHost(RUN, tail=0)
        _s, lossless = host.attach(lossless=True)
        one = TaskOutput(run=RUN, task="a", data=b"a1\na2\n")
        host.bus.emit(one)
        got = await lossless.take()
        assert len(got) == 1 and got[0] is one and one.text == ""
        for i in range(3):
            host.bus.emit(TaskOutput(run=RUN, task="a", data=b"b%d\n" % i))
        got = await lossless.take()
        assert len(got) == 1 and got[0].data == b"b0\nb1\nb2\n" and got[0].text == ""
        assert got[0].all_lines() == ["b0", "b1", "b2"] and got[0].line_count() == 3
        assert got[0].last_lines(2) == ["b1", "b2"]
        host.detach(lossless)

    anyio.run(main)
    ev = TaskOutput(run=RUN, task="a", data="x\nzwei é\n".encode())
    assert ev.to_dict()["text"] == "x\nzwei é\n" and "data" not in ev.to_dict()
    wire = wire_dict(TaskOutput(run=RUN, task="a", data=b"x\ny\n"))
    assert wire["lines"] == ["x", "y"] and "data" not in wire and "text" not in wire
    json.dumps(wire)

"""The ``corral`` command as a person types it: near-miss names get a suggestion, the keymap file,
and ``corral demo``'s scratch repository."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from conftest import corral, write_plan
from corral.tui.dashboard import CorralApp
from corral.tui.keymap import KeymapError, binding_ids, keymap_path, load_keymap
from test_tui_pilot import SIZE


def test_near_misses_get_a_suggestion(repo: Path, tmp_path: Path) -> None:
    plan = tmp_path / "plan.toml"
    cases = [
        ('agnet = "shell"\n[[tasks]]\nname = "a"\nprompt = "b"\n', "agnet: unknown key (did you mean 'agent'?)"),
        ('agent = "claud"\n[[tasks]]\nname = "a"\nprompt = "b"\n',
         "plan.toml: agent: unknown agent 'claud' (did you mean 'claude'?)"),
        ('agent = "shell"\n[[tasks]]\nname = "a"\nprompt = "b"\nagnet = "shell"\n',
         "tasks[1].agnet: unknown key (did you mean 'agent'?)"),
        ('[[tasks]]\nname = "a"\nprompt = "b"\nagent = "claud"\n', "tasks[1].agent: unknown agent 'claud' for task 'a' "
                                                                    "(did you mean 'claude'?)"),
    ]
    for text, said in cases:
        write_plan(plan, text)
        res = corral("run", str(plan), "--headless", cwd=repo)
        assert res.returncode == 2, res.stderr
        assert said in res.stderr, res.stderr
        assert res.stderr.count("\n") == 1
    res = corral("run", "--task", "a=b", "--agent", "claud", "--headless", cwd=repo)
    assert res.returncode == 2 and "unknown agent 'claud' (did you mean 'claude'?)" in res.stderr


def test_keymap_file_changes_keys(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    path = keymap_path()
    assert path == tmp_path / "config" / "corral" / "keymap.toml"
    assert load_keymap() == {}, "no file: Textual's keys"
    path.parent.mkdir(parents=True)
    path.write_text('"run.events" = "v"\n"run.quit" = "x,q"\n')
    keymap = load_keymap()
    assert keymap == {"run.events": "v", "run.quit": "x,q"}
    assert {"run.zoom", "run.abort", "review.approve", "home.clean", "confirm.yes"} <= set(binding_ids())

    async def main() -> None:
        import tui_scenes
        from corral.core.events import EventBus

        app = CorralApp(bus=EventBus(tui_scenes.RUN_ID), clock=tui_scenes.clock, notifications=False, keymap=keymap)
        async with app.run_test(size=SIZE) as pilot:
            await tui_scenes.play(app, "run", pilot.pause)
            box = app.run_screen.query_one("#events-box")
            await pilot.press("e")
            assert box.collapsed, "e is not the events key any more"
            await pilot.press("v")
            assert not box.collapsed
            await pilot.press("x")
            await pilot.pause()
        assert app.return_value == 0, "x quits (nothing runs)"

    asyncio.run(main())


def test_a_wrong_keymap_is_one_line_exit_2(repo: Path, tmp_path: Path) -> None:
    config = tmp_path / "config"
    (config / "corral").mkdir(parents=True)
    env = {"XDG_CONFIG_HOME": str(config)}
    (config / "corral" / "keymap.toml").write_text('"run.abrot" = "x"\n')
    for args in (["--repo", str(repo)], ["run", "--task", "a=echo hi", "--agent", "shell"]):
        res = corral(*args, cwd=repo, env=env)
        assert res.returncode == 2, res.stderr
        assert "unknown binding id 'run.abrot' (did you mean 'run.abort'?)" in res.stderr
        assert res.stderr.count("\n") == 1
    assert not (repo / ".git" / "corral").exists(), "nothing started"
    (config / "corral" / "keymap.toml").write_text('"run.abort" = 3\n')
    try:
        load_keymap(config / "corral" / "keymap.toml")
    except KeymapError as exc:
        assert "run.abort must be a string of keys" in str(exc)
    else:
        raise AssertionError("a number is not a key")


def test_demo_removes_its_scratch_repository_and_says_why_it_exits_1(tmp_path: Path) -> None:
    import tempfile

    scratch = Path(tempfile.gettempdir())  # the test's own (conftest): the demo makes its repository here
    res = corral("demo", "--headless", "--delay", "0")
    assert res.returncode == 1
    first = res.stdout.splitlines()[0]
    assert "corral demo: scratch repository " in first and "removed at exit; --keep keeps it" in first
    assert "exit code 1 is by design" in res.stdout
    assert "removed the scratch repository" in res.stdout
    assert not list(scratch.glob("corral-demo-*")), "nothing left in the temp dir"

    res = corral("demo", "--headless", "--delay", "0", "--keep")
    [kept] = list(scratch.glob("corral-demo-*"))
    assert f"the scratch repository is kept at {kept}" in res.stdout
    assert (kept / "calc" / "greet.py").exists()
    shutil.rmtree(kept)  # kept for the user: the user removes it


def test_readme_names_every_binding_id() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert "~/.config/corral/keymap.toml" in readme
    missing = [bid for bid in binding_ids() if f"`{bid}`" not in readme]
    assert not missing, f"README's keymap section lacks {missing}"

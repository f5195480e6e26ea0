"""Property-based tests: any name or plan is either accepted and round-trips, or refused cleanly."""

from __future__ import annotations

import json
import re
import subprocess

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import corral, corral_state, make_repo
from corral.core.plan import PlanError, parse_plan_text, task_name_problem

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)
names = st.one_of(text, st.from_regex(r"[A-Za-z0-9._-]{1,45}", fullmatch=True))


def toml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def documented_name(name: str) -> bool:
    """The README's rule: 1-40 of [A-Za-z0-9._-], no '..', no leading '-' or '.'."""
    return (re.fullmatch(r"[A-Za-z0-9._-]{1,40}", name) is not None and ".." not in name
            and name[0] not in "-.")


def git_accepts(name: str) -> bool:
    """git accepts ``corral/<run>/<name>`` as a branch name (no argument can hold a NUL)."""
    ref = f"refs/heads/corral/20260101-000000-abcd/{name}"
    return "\0" not in name and subprocess.run(["git", "check-ref-format", ref]).returncode == 0


@given(names)
@example("0\n")  # a trailing newline once slipped past a `$`-anchored pattern
def test_task_names_are_accepted_only_when_git_accepts_the_branch(name):
    problem = task_name_problem(name)
    if problem is None:
        assert 1 <= len(name) <= 40
        assert git_accepts(name), name
    else:
        # refused only for a reason: the documented rule, or git's own refusal of the branch name
        assert not documented_name(name) or not git_accepts(name), (name, problem)
        assert isinstance(problem, str) and problem and "\n" not in problem


plan_values = st.fixed_dictionaries(
    {
        "tasks": st.lists(
            st.fixed_dictionaries(
                {"name": names, "prompt": text},
                optional={"system_prompt": text, "agent": st.sampled_from(["shell", "claude", "nope"]),
                          "timeout": st.one_of(st.integers(-5, 100), st.floats(0, 100))},
            ),
            max_size=4,
        ),
    },
    optional={
        "merge": st.sampled_from(["merge", "squash", "rebase", "octopus"]),
        "approve": st.sampled_from(["ask", "all", "none", "maybe"]),
        "max_parallel": st.one_of(st.integers(-3, 50), st.just("4")),
        "verify": text,
        "base": text,
        "agent": st.sampled_from(["shell", "codex", "ghost"]),
        "extra": st.integers(),
    },
)


def to_toml(plan: dict) -> str:
    lines = []
    for key, value in plan.items():
        if key != "tasks":
            lines.append(f"{key} = {toml_str(value) if isinstance(value, str) else json.dumps(value)}")
    for t in plan["tasks"]:
        lines.append("[[tasks]]")
        for key, value in t.items():
            lines.append(f"{key} = {toml_str(value) if isinstance(value, str) else json.dumps(value)}")
    return "\n".join(lines) + "\n"


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(plan_values)
def test_plans_parse_and_round_trip_or_are_refused_with_one_line(plan):
    source = to_toml(plan)
    try:
        parsed = parse_plan_text(source, "p.toml")
    except PlanError as exc:
        message = str(exc)
        assert message.startswith("p.toml: ") and "\n" not in message
        return
    d = parsed.to_dict()
    assert [t["name"] for t in d["tasks"]] == [t["name"] for t in plan["tasks"]]
    assert [t["prompt"] for t in d["tasks"]] == [t["prompt"] for t in plan["tasks"]]
    for key in ("merge", "approve", "max_parallel", "verify", "base"):
        if key in plan:
            assert d[key] == plan[key]
    # round trip: the parsed plan written back parses to the same plan
    again = {k: v for k, v in d.items() if k in plan or k == "tasks"}
    again["tasks"] = [{k: v for k, v in t.items() if v is not None and (k in ("name", "prompt") or k in orig)}
                      for t, orig in zip(d["tasks"], plan["tasks"])]
    assert parse_plan_text(to_toml(again), "p.toml").to_dict() == {**d, "source": "p.toml"}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(plan=plan_values.filter(lambda p: p["tasks"]))
def test_refused_plans_create_nothing_through_the_cli(tmp_path_factory, plan):
    repo = make_repo(tmp_path_factory.mktemp("r") / "repo")
    plan.setdefault("agent", "shell")
    source = to_toml(plan)
    try:
        parse_plan_text(source, "p.toml")
        return  # accepted plans are covered by the pipeline tests
    except PlanError:
        pass
    path = repo.parent / "plan.toml"
    path.write_text(source)
    res = corral("run", str(path), "--headless", "--approve", "none", cwd=repo, timeout=60)
    assert res.returncode == 2, res.stdout + res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert corral_state(repo) == {"branches": [], "worktrees": [], "runs": []}

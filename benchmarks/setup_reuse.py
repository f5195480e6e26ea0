"""Setup: a cold `npm ci` in each workspace against copying the base checkout's node_modules
(`reuse_deps = true`, copy-on-write where the filesystem allows, a plain copy otherwise).

Needs npm and the npm registry. Measures the setup phase of each task (task_status `setup` to
`running`, from the run's events.jsonl) for 4 tasks, both ways.

    python benchmarks/setup_reuse.py [--tasks 4] [--packages "express@4 lodash@4 chalk@4"]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from _common import corral_cmd, fmt, median, scratch_repo


def setup_times(repo: Path, tasks: int, reuse: bool) -> list[float]:
    plan = Path(tempfile.mktemp(suffix=".toml"))
    body = ['agent = "shell"', 'setup = "auto"', f"reuse_deps = {'true' if reuse else 'false'}"]
    for i in range(tasks):
        body += ["[[tasks]]", f'name = "t{i}"', 'prompt = "test -d node_modules && echo has deps"']
    plan.write_text("\n".join(body) + "\n")
    subprocess.run([*corral_cmd(), "run", str(plan), "--headless", "--approve", "none"], cwd=repo,
                   stdout=subprocess.DEVNULL, check=False)
    run_dir = sorted((repo / ".git/corral/runs").iterdir())[-1]
    events = [json.loads(l) for l in (run_dir / "events.jsonl").read_text().splitlines()]
    times = []
    for i in range(tasks):
        st = {e["status"]: e["ts"] for e in events if e["type"] == "task_status" and e.get("task") == f"t{i}"}
        times.append(st["running"] - st["setup"])
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--packages", default="express@4 lodash@4 chalk@4")
    a = ap.parse_args()
    if shutil.which("npm") is None:
        print("setup reuse: skipped, npm is not installed")
        return
    repo = scratch_repo()
    (repo / ".gitignore").write_text("node_modules/\n")
    subprocess.run(["npm", "init", "-y"], cwd=repo, check=True, capture_output=True)
    res = subprocess.run(["npm", "install", "--no-audit", "--no-fund", *a.packages.split()], cwd=repo,
                         capture_output=True, text=True)
    if res.returncode != 0:
        print(f"setup reuse: skipped, npm install failed: {res.stderr.strip().splitlines()[-1:]}")
        return
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "deps"], cwd=repo, check=True)
    n = sum(1 for _ in (repo / "node_modules").rglob("*"))
    print(f"setup: {a.tasks} workspaces of a Node project ({a.packages}; node_modules: {n} entries)")
    cold = setup_times(repo, a.tasks, reuse=False)
    warm = setup_times(repo, a.tasks, reuse=True)
    print(f"  cold npm ci per workspace (median)      {fmt(median(cold))} s")
    print(f"  reuse base node_modules (median)        {fmt(median(warm))} s   ratio {median(cold) / median(warm):.1f}x")


if __name__ == "__main__":
    main()

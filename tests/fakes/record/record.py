#!/usr/bin/env python3
"""Record what the real agent CLIs print, for the fakes in tests/fakes to replay.

Each CLI runs with corral's built-in profile (its argv and environment, in a linked git worktree
like corral's, stdin closed, stdout and stderr on one pipe as corral reads them), with a private
HOME and configuration that point it at the stand-in model API of ``standin.py`` on 127.0.0.1 (how
each one is redirected is in core/AGENTS.md, "Recording the real CLIs"). The transcript goes to
``tests/fakes/transcripts/<agent>-<scenario>.json``: the CLI's version, argv, exit code, every
output line (the workspace path replaced by ``{cwd}``) and the files it left in the workspace.

Install the CLIs into a private prefix first, never globally, e.g.::

    npm install --prefix /tmp/agents-rec/npm @anthropic-ai/claude-code @openai/codex \\
        @google/gemini-cli opencode-ai @mariozechner/pi-coding-agent
    python3 -m venv /tmp/agents-rec/aider && /tmp/agents-rec/aider/bin/pip install aider-chat

    python tests/fakes/record/record.py --bin /tmp/agents-rec/npm/node_modules/.bin \\
        --bin /tmp/agents-rec/aider/bin [--only codex] [--scenario write|error|denied|ask]

Nothing here reaches beyond 127.0.0.1: telemetry, update checks and model-list downloads are
switched off in each CLI's configuration, and the stand-in is its only API.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
from corral.core.agents import BUILTIN  # run with corral installed (pip install -e .)

OUT = HERE.parent / "transcripts"
PROMPT = "Create hello.py that prints hello."
KEY = "sk-standin-0000"
#: scenarios each CLI is recorded in (``ask``: opencode with edits set to "ask", auto-rejected;
#: ``untrusted``: Gemini CLI without GEMINI_CLI_TRUST_WORKSPACE, in a folder it does not trust)
SCENARIOS = {"claude": ("write", "error"), "codex": ("write", "error", "denied"), "aider": ("write", "error"),
             "gemini": ("write", "error", "untrusted"), "opencode": ("write", "error", "ask"), "pi": ("write", "error")}


def write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


# ------------------------------------------------------------------ per-CLI redirection to the stand-in
def setup_claude(home: Path, url: str, scenario: str, exe: str) -> dict[str, str]:
    return {"ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": KEY, "IS_SANDBOX": "1", "DISABLE_TELEMETRY": "1",
            "DISABLE_ERROR_REPORTING": "1", "DISABLE_AUTOUPDATER": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}


def setup_codex(home: Path, url: str, scenario: str, exe: str) -> dict[str, str]:
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True)
    (codex_home / "config.toml").write_text(f"""\
model = "gpt-5.5"
model_provider = "standin"
check_for_update_on_startup = false

[analytics]
enabled = false

[model_providers.standin]
name = "stand-in"
base_url = "{url}/v1"
wire_api = "responses"
env_key = "STANDIN_API_KEY"
""", encoding="utf-8")
    return {"CODEX_HOME": str(codex_home), "STANDIN_API_KEY": KEY}


def setup_aider(home: Path, url: str, scenario: str, exe: str) -> dict[str, str]:
    # litellm's Anthropic route: the usage has cache writes and cache reads, which aider reports apart.
    # aider downloads litellm's price list from GitHub unless its cache is fresh: seed it with litellm's copy
    prices = sorted(Path(exe).resolve().parent.parent.glob(
        "lib/python3*/site-packages/litellm/model_prices_and_context_window_backup.json"))
    if prices:
        (home / ".aider" / "caches").mkdir(parents=True)
        shutil.copy(prices[0], home / ".aider" / "caches" / "model_prices_and_context_window.json")
    return {"ANTHROPIC_API_KEY": KEY, "ANTHROPIC_API_BASE": url, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}


def setup_gemini(home: Path, url: str, scenario: str, exe: str) -> dict[str, str]:
    write_json(home / ".gemini" / "settings.json", {
        "security": {"auth": {"selectedType": "gemini-api-key"}},
        "privacy": {"usageStatisticsEnabled": False}, "telemetry": {"enabled": False},
        "general": {"disableAutoUpdate": True, "disableUpdateNag": True}})
    return {"GEMINI_API_KEY": KEY, "GOOGLE_GEMINI_BASE_URL": url}


def setup_opencode(home: Path, url: str, scenario: str, exe: str) -> dict[str, str]:
    config = {
        "$schema": "https://opencode.ai/config.json", "autoupdate": False, "share": "disabled",
        "model": "standin/stand-in",
        "provider": {"standin": {"npm": "@ai-sdk/openai-compatible", "name": "stand-in",
                                 "options": {"baseURL": f"{url}/v1", "apiKey": KEY},
                                 "models": {"stand-in": {"name": "stand-in", "cost": {
                                     "input": 3, "output": 15, "cache_read": 0.3, "cache_write": 3.75}}}}}}
    if scenario == "ask":
        config["permission"] = {"edit": "ask"}
    write_json(home / ".config" / "opencode" / "opencode.json", config)
    return {"OPENCODE_DISABLE_MODELS_FETCH": "1", "OPENCODE_DISABLE_AUTOUPDATE": "1",
            "OPENCODE_DISABLE_LSP_DOWNLOAD": "1", "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1"}


def setup_pi(home: Path, url: str, scenario: str, exe: str) -> dict[str, str]:
    agent_dir = home / ".pi" / "agent"
    write_json(agent_dir / "models.json", {"providers": {"standin": {
        "baseUrl": f"{url}/v1", "api": "openai-completions", "apiKey": "STANDIN_API_KEY",
        "models": [{"id": "stand-in", "name": "stand-in", "reasoning": False, "input": ["text"],
                    "cost": {"input": 3, "output": 15, "cacheRead": 0.3, "cacheWrite": 3.75},
                    "contextWindow": 128000, "maxTokens": 16000}]}}})
    write_json(agent_dir / "settings.json", {"defaultProvider": "standin", "defaultModel": "stand-in"})
    return {"PI_CODING_AGENT_DIR": str(agent_dir), "PI_OFFLINE": "1", "STANDIN_API_KEY": KEY}


SETUP: dict[str, Callable[[Path, str, str, str], dict[str, str]]] = {
    "claude": setup_claude, "codex": setup_codex, "aider": setup_aider, "gemini": setup_gemini,
    "opencode": setup_opencode, "pi": setup_pi}


# --------------------------------------------------------------------------------------- one record
def git(cwd: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="rec", GIT_AUTHOR_EMAIL="rec@localhost", GIT_COMMITTER_NAME="rec",
               GIT_COMMITTER_EMAIL="rec@localhost")
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def version(exe: str, env: dict[str, str], cwd: Path) -> str:
    res = subprocess.run([exe, *BUILTIN[Path(exe).name].version_args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL, timeout=60)
    return next((ln.strip() for ln in res.stdout.splitlines() if ln.strip()), "?")


def record(agent: str, scenario: str, path: str, keep: bool) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=f"rec-{agent}-"))  # the workspace is in the temp dir, as corral's are
    # Codex refuses to set up its helpers in a CODEX_HOME under the temp dir: the private home is not there
    home = Path(tempfile.mkdtemp(prefix=f"rec-{agent}-", dir=Path.home() / ".cache"))
    repo, ws = tmp / "repo", tmp / "wt" / "ws"
    repo.mkdir()
    (home / ".gitconfig").write_text("[user]\n\tname = rec\n\temail = rec@localhost\n")  # as a user has
    git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("# demo\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "init")
    git(repo, "worktree", "add", "-q", "-b", f"rec/{agent}", str(ws))
    port_file = tmp / "port"
    server = subprocess.Popen([sys.executable, str(HERE / "standin.py"), "--dir", str(ws), "--scenario",
                               scenario if scenario in ("denied", "error") else "write",
                               "--port-file", str(port_file), "--log", str(tmp / "requests.jsonl"), *(["--dump"] if keep else [])],
                              stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not port_file.exists():
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the stand-in did not start")
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port_file.read_text().strip()}"
        profile = BUILTIN[agent]
        env = {"PATH": path, "HOME": str(home), "LANG": "C.UTF-8", "TERM": "xterm-256color", "PWD": str(ws),
               "XDG_CONFIG_HOME": str(home / ".config"), "XDG_DATA_HOME": str(home / ".local" / "share"),
               "XDG_CACHE_HOME": str(home / ".cache"), "XDG_STATE_HOME": str(home / ".local" / "state"),
               "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost", "TMPDIR": str(tmp)}
        exe = shutil.which(profile.executable, path=path)
        if not exe:
            raise SystemExit(f"{profile.executable} is not on --bin")
        env.update(SETUP[agent](home, url, scenario, exe))
        env.update(dict(profile.env))
        if scenario == "untrusted":
            env.pop("GEMINI_CLI_TRUST_WORKSPACE", None)
        argv = [exe, *profile.argv(prompt=PROMPT, workspace=str(ws))[1:]]
        start = time.monotonic()
        proc = subprocess.run(argv, cwd=ws, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=300, start_new_session=True)
        took = time.monotonic() - start
        text = proc.stdout.decode("utf-8", "replace")
        real = os.path.realpath(ws)
        lines = [ln.replace(real, "{cwd}").replace(str(ws), "{cwd}").replace(str(home), "{home}")
                 .replace(str(tmp), "{tmp}") for ln in text.splitlines()]
        status = git(ws, "status", "--porcelain", "-uall")
        files = {}
        for entry in status.splitlines():
            name = entry[3:]
            p = ws / name
            files[name] = p.read_text(errors="replace") if p.is_file() and p.stat().st_size < 4096 else None
        out = OUT / f"{agent}-{scenario}.json"
        write_json(out, {
            "agent": agent, "version": version(exe, env, ws), "scenario": scenario, "prompt": PROMPT,
            "argv": [Path(argv[0]).name, *argv[1:]], "exit_code": proc.returncode, "seconds": round(took, 1),
            "recorded": time.strftime("%Y-%m-%d"), "files": files, "output": lines})
        print(f"{agent}/{scenario}: exit {proc.returncode} in {took:.1f}s, {len(lines)} lines, files "
              f"{sorted(files)} -> {out.relative_to(ROOT)}")
        return out
    finally:
        server.terminate()
        server.wait()
        if keep:
            print(f"  kept {tmp} and {home} (requests: {tmp / 'requests.jsonl'})")
        else:
            subprocess.run(["git", "worktree", "remove", "--force", str(ws)], cwd=repo, capture_output=True)
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description="Record the real agent CLIs against the local stand-in API.")
    ap.add_argument("--bin", action="append", default=[], help="a directory holding CLIs (repeatable)")
    ap.add_argument("--only", action="append", choices=sorted(SCENARIOS), help="record these CLIs only")
    ap.add_argument("--scenario", action="append", help="record these scenarios only")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (request log, home)")
    args = ap.parse_args()
    path = os.pathsep.join([*args.bin, "/usr/local/bin", "/usr/bin", "/bin"])
    for agent in args.only or list(SCENARIOS):
        for scenario in SCENARIOS[agent]:
            if not args.scenario or scenario in args.scenario:
                record(agent, scenario, path, args.keep)


if __name__ == "__main__":
    main()

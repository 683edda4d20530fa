"""What README and docs/ say runs, runs (README, "Commands in README and docs/").

Every fenced block of README.md, docs/*.md and deploy/README.md says what it holds; the ``bash``,
``sh`` and ``python`` blocks run here, in the order of their page, each page in a fresh folder laid
out as a checkout after `make demo`:

* the repository's files (Makefile, pyproject.toml, deploy/, results/...) as links;
* ``runs/demo`` and ``data/demo``: what README's `make demo` block leaves, run once per session
  with the reduced sizes its marker states (as the demo builds them: keys, model, recording);
* ``awc.onnx``: a copy of the demo's model, the "exported model" the pages name;
* ``data/mmfi-bench``, ``data/mmfi-small``, ``data/mmfi``, ``data/tiny``, ``data/mmfi-study``: one
  tiny generated dataset (3 subjects x 3 P1 actions) under each name the pages use.

Commands that run until stopped (`runtime serve`, `runtime view`, a real-time `sensors replay`)
are started, checked (health endpoint, viewer page, messages reaching the runtime), and stopped
with Ctrl-C (SIGINT) when a later command needs their ports or the block ends; they must then exit
cleanly. `make` runs with the test's Python, never reinstalling. Blocks marked as illustrations are
not run, and say why; the tests below check the markers, that no command hides in a block that is
never run, that the extras the pages install exist, and that README's benchmark tables are the
committed bench reports.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from fixtures.doc_blocks import NEVER_RUN, RUN, Block, blocks, logical_lines

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "deploy" / "README.md"]
DATASET_NAMES = ("mmfi-bench", "mmfi-small", "mmfi", "tiny", "mmfi-study")
LINKED = ("Makefile", "pyproject.toml", "README.md", "deploy")
COMMAND_WORDS = ("runtime", "training", "sensors", "python", "python3", "pip", "make", "promtool", "amtool",
                 "curl", "docker", "systemctl", "torchrun", "journalctl", "install", "useradd", "nohup")
IN_CI = os.environ.get("CI", "").lower() == "true"

pytestmark = pytest.mark.slow


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


ALL_BLOCKS = [b for page in PAGES for b in blocks(page)]


# --- the markers and what blocks hold -------------------------------------------------------------

def test_every_block_says_what_it_holds():
    bad = [f"{b.where} ```{b.info}" for b in ALL_BLOCKS if b.info not in RUN + NEVER_RUN]
    assert not bad, f"fences need an info string of {RUN + NEVER_RUN}: {bad}"


def test_markers_are_well_formed():
    problems = []
    for b in ALL_BLOCKS:
        kinds = [k for k, _ in b.markers]
        if b.illustration is not None and not b.illustration.strip():
            problems.append(f"{b.where}: an illustration says why it is not run")
        if b.markers and b.info not in RUN:
            problems.append(f"{b.where}: markers only go on runnable blocks ({', '.join(RUN)})")
        if "illustration" in kinds and "doc-test" in kinds:
            problems.append(f"{b.where}: an illustration is not run, so it takes no doc-test marker")
        for kind, body in b.markers:
            if kind == "doc-test" and not body.startswith(("env ", "replace ")):
                problems.append(f"{b.where}: unknown doc-test marker {body!r}")
        if b.info in RUN and b.illustration is None:
            b.runnable_text()   # replace markers must match
    assert not problems, problems


def test_no_command_hides_in_a_block_that_is_never_run():
    """`text` holds output, diagrams and layouts; `console` is a transcript with `$` prompts."""
    problems = []
    for b in ALL_BLOCKS:
        if b.info == "text":
            for line in b.text.splitlines():
                words = line.split()
                if (words and words[0] in COMMAND_WORDS and len(words) > 1
                        and re.fullmatch(r"-{0,2}[a-z][a-z0-9.-]*", words[1])):
                    problems.append(f"{b.where}: {line.strip()!r} looks like a command: make the block bash "
                                    "(run) or mark it as an illustration")
        if b.info == "console" and not any(line.startswith("$ ") for line in b.text.splitlines()):
            problems.append(f"{b.where}: a console block is a transcript: its commands start with '$ '")
    assert not problems, problems


def test_the_extras_the_pages_install_exist():
    tomllib = pytest.importorskip("tomllib")
    extras = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    named = set()
    for page in PAGES:
        for group in re.findall(r"(?:awc-pose|\.|/opt/awc-pose)\[([a-z0-9_,-]+)\]", page.read_text()):
            named.update(group.split(","))
    assert {"station", "cpu", "view", "train"} <= named, named
    assert named <= extras, f"pages install extras pyproject.toml does not define: {sorted(named - extras)}"


def test_benchmark_tables_are_the_committed_reports():
    """README's (and docs/runtime.md's soak) tables are printed from the committed reports by the
    commands the pages name."""
    from runtime.bench import markdown as runtime_tables

    readme = (REPO / "README.md").read_text()
    bench = REPO / "results" / "bench"
    runtime_report = json.loads((bench / "runtime.json").read_text())
    assert "rehab" in runtime_report["stages"]
    assert runtime_tables(runtime_report) in readme, "README's runtime bench tables differ from results/bench/runtime.json"
    soak = json.loads((bench / "soak.json").read_text())
    assert soak["end_to_end_10hz"]["duration_s"] == 600
    assert runtime_tables(soak) in (REPO / "docs" / "runtime.md").read_text(), "docs/runtime.md's soak differs"
    for cmd in ("runtime bench --model runs/demo/awc.onnx --report results/bench/runtime.json",
                "runtime bench --markdown results/bench/runtime.json",
                "training bench-export --preset small --threads 1 --iters 200 --report results/bench/export-1-thread.json",
                "training bench-export --preset small --threads 2 --iters 400 --report results/bench/export-2-threads.json",
                "training bench-export --markdown results/bench/export-1-thread.json results/bench/export-2-threads.json"):
        assert cmd in readme, f"README does not say how its figures were made: {cmd}"
    pytest.importorskip("torch")
    from training.bench_export import markdown as export_table

    reports = [json.loads((bench / f).read_text())["presets"][0] for f in ("export-1-thread.json", "export-2-threads.json")]
    assert export_table(reports) in readme, "README's bench-export table differs from results/bench/export-*.json"


# --- running the pages --------------------------------------------------------------------------------

def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def port_free(port: int) -> bool:
    """Nothing listens on it (connections of a stopped server in TIME_WAIT do not count: servers
    bind with SO_REUSEADDR, as the runtime and the viewer do)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _opt(tokens: list[str], name: str, default=None):
    for i, t in enumerate(tokens):
        if t == name and i + 1 < len(tokens):
            return tokens[i + 1]
        if t.startswith(name + "="):
            return t.split("=", 1)[1]
    return default


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


class LongRunning:
    """A command that runs until stopped: what it holds, how to tell it is up."""

    def __init__(self, kind: str, tokens: list[str]):
        self.kind, self.tokens = kind, tokens
        self.ports: list[int] = []
        self.health: list[str] = []
        self.holds: set[str] = set()     # what it holds
        self.replaces: set[str] = set()  # what a new one of it stops first
        if kind == "serve":
            metrics = int(_opt(tokens, "--metrics-port", 9108))
            self.ports += [metrics, _port(_opt(tokens, "--output", "tcp://127.0.0.1:5556"))]
            if "--connect" not in tokens:
                self.ports.append(_port(_opt(tokens, "--input", "tcp://127.0.0.1:5555")))
            self.health.append(f"http://127.0.0.1:{metrics}/healthz")
            self.metrics_url = f"http://127.0.0.1:{metrics}/metrics"
            self.holds, self.replaces = {"runtime"}, {"runtime", "feed"}   # a new runtime: new sensors too
            if "--view" in tokens:
                nxt = tokens[tokens.index("--view") + 1] if tokens.index("--view") + 1 < len(tokens) else ""
                view = int(nxt) if nxt.isdigit() else 8080
                self.ports.append(view)
                self.health.append(f"http://127.0.0.1:{view}/")
                self.holds.add(f"view:{view}")
                self.replaces.add(f"view:{view}")
        elif kind == "view":
            port = int(_opt(tokens, "--port", 8080))
            self.ports.append(port)
            self.health.append(f"http://127.0.0.1:{port}/")
            self.holds = self.replaces = {f"view:{port}"}
        else:   # a real-time replay feeding the runtime
            self.holds = self.replaces = {"feed"}


def long_running(line: str) -> LongRunning | None:
    tokens = shlex.split(line, comments=True)
    if tokens[:2] in (["python", "-m"], ["python3", "-m"]):
        tokens = tokens[2:]
    if any(t in ("&&", "||", ";", "|", "&") for t in tokens) or len(tokens) < 2:
        return None
    tool, cmd = tokens[0], tokens[1]
    if (tool, cmd) == ("runtime", "serve") and "--duration" not in tokens:
        return LongRunning("serve", tokens)
    if (tool, cmd) == ("runtime", "view"):
        return LongRunning("view", tokens)
    if (tool, cmd) == ("sensors", "replay") and float(_opt(tokens, "--rate", 1.0)) > 0 and "--max-frames" not in tokens:
        return LongRunning("replay", tokens)
    return None


def messages_received(metrics_url: str) -> float:
    try:
        with urllib.request.urlopen(metrics_url, timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    return sum(float(v) for v in re.findall(r"^awc_messages_received_total\{[^}]*\} (\S+)$", text, re.M))


class PageRun:
    """Runs the blocks of one page in its folder; keeps a log of every command and its output."""

    def __init__(self, folder: Path, python: str):
        self.folder, self.log = folder, folder / "doc-test.log"
        self.running: list[tuple[LongRunning, subprocess.Popen, Path]] = []
        self.timings: list[tuple[str, float]] = []
        bin_dir = folder / ".bin"
        bin_dir.mkdir(exist_ok=True)
        make = bin_dir / "make"   # the Makefile's targets with this Python, never reinstalling the venv
        make.write_text(f'#!/bin/sh\nexec {shutil.which("make")} -o .venv/.installed PY="{python}" "$@"\n')
        make.chmod(0o755)
        self.env = {**os.environ, "PATH": os.pathsep.join([str(bin_dir), str(Path(python).parent), os.environ["PATH"]]),
                    "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
        self.env.pop("AWC_ALERT_TIMELINE", None)

    def fail(self, block: Block, what: str, output: str = "") -> None:
        self.stop_all()
        done = "\n".join(f"{s:7.1f} s  {line}" for line, s in self.timings)
        pytest.fail(f"{block.where}: {what}\n{output[-4000:]}\n(ran before, in {self.folder}:)\n{done}", pytrace=False)

    def write_log(self, text: str) -> None:
        with open(self.log, "a") as f:
            f.write(text)

    def run_block(self, block: Block) -> None:
        env = {**self.env, **block.env}
        text = block.runnable_text()
        if block.info == "python":
            script = self.folder / f"block_{block.path.stem}_{block.line}.py"
            script.write_text(text + "\n")
            self.finite(block, f"{sys.executable} {script.name}", env, shell=False,
                        argv=[sys.executable, script.name])
        else:
            for line in logical_lines(text):
                for name in DATASET_NAMES:
                    if re.search(rf"--out\s+data/{re.escape(name)}(?![\w-])", line):
                        self.fail(block, f"{line!r} would write into the shared dataset linked as data/{name}")
                self.require_program(block, line)
                lr = long_running(line)
                if lr is None:
                    self.finite(block, line, env)
                else:
                    self.start(block, line, lr, env)
        self.stop_all(block)

    def require_program(self, block: Block, line: str) -> None:
        """A system tool the line starts with (promtool, amtool...) must be installed: skip without it,
        fail under CI (where .ci/run installs it), as the deploy tests do."""
        first = shlex.split(line, comments=True)[0]
        if "=" in first or "/" in first or first in ("cd", "mkdir", "cp", "printf", "echo", "R"):
            return
        if shutil.which(first, path=self.env["PATH"]) is None:
            msg = f"{block.where}: {first!r} is not installed here ({line!r})"
            if IN_CI:
                self.fail(block, msg + " - CI must have it")
            self.stop_all()
            pytest.skip(msg)

    def finite(self, block: Block, line: str, env: dict, shell: bool = True, argv: list[str] | None = None) -> None:
        self.write_log(f"\n$ {line}\n")
        t0 = time.monotonic()
        try:
            r = subprocess.run(["bash", "-o", "pipefail", "-c", line] if shell else argv, cwd=self.folder, env=env,
                               capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired as err:
            self.fail(block, f"{line!r} did not finish in 600 s", str(err.stdout or ""))
        self.timings.append((line, time.monotonic() - t0))
        self.write_log(r.stdout + r.stderr)
        if r.returncode != 0:
            self.fail(block, f"{line!r} exited with {r.returncode}", r.stdout + r.stderr)

    def start(self, block: Block, line: str, lr: LongRunning, env: dict) -> None:
        for other in [r for r in self.running if r[0].holds & lr.replaces]:
            self.stop(block, other)
        busy = [p for p in lr.ports if not port_free(p)]
        if busy:
            msg = f"{line!r} uses port(s) {busy}, which another process holds on this machine"
            if IN_CI:
                self.fail(block, msg)
            self.stop_all()
            pytest.skip(msg)
        out = self.folder / f"lr-{len(self.timings)}-{lr.kind}.log"
        self.write_log(f"\n$ {line}    (runs until stopped: {out.name})\n")
        t0 = time.monotonic()
        proc = subprocess.Popen(["bash", "-c", "exec " + line], cwd=self.folder, env=env, stdout=open(out, "w"),
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.running.append((lr, proc, out))
        deadline = time.monotonic() + 90
        feeding = next((r[0] for r in self.running if r[0].kind == "serve" and r[1].poll() is None), None)
        before = messages_received(feeding.metrics_url) if (lr.kind == "replay" and feeding) else 0.0
        while True:
            if proc.poll() is not None:
                self.fail(block, f"{line!r} exited with {proc.returncode} instead of running", out.read_text())
            if lr.kind == "replay":
                up = (time.monotonic() - t0 > 3 and (feeding is None or messages_received(feeding.metrics_url) > before))
            else:
                up = all(http_status(url) == 200 for url in lr.health)
            if up:
                break
            if time.monotonic() > deadline:
                self.fail(block, f"{line!r} did not come up ({', '.join(lr.health) or 'no messages reached the runtime'})",
                          out.read_text())
            time.sleep(0.3)
        self.timings.append((line, time.monotonic() - t0))

    def stop(self, block: Block | None, item) -> None:
        lr, proc, out = item
        self.running.remove(item)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)   # Ctrl-C, as a user stops it
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
                if block is not None:
                    self.fail(block, f"{' '.join(lr.tokens)!r} did not stop on Ctrl-C", out.read_text())
        text = out.read_text()
        self.write_log(text)
        if block is not None and (proc.returncode not in (0, 130) or "Traceback" in text):
            self.fail(block, f"{' '.join(lr.tokens)!r} stopped with {proc.returncode}", text)

    def stop_all(self, block: Block | None = None) -> None:
        for item in list(self.running)[::-1]:
            self.stop(block, item)


def seed_folder(folder: Path, demo: Path, dataset: Path) -> None:
    """A checkout after `make demo`: repository files linked, the demo's outputs, the datasets."""
    for name in LINKED:
        (folder / name).symlink_to(REPO / name)
    (folder / "docs" / "img").mkdir(parents=True)
    (folder / "results").mkdir()
    for child in (REPO / "results").iterdir():
        if child.name != "bench":
            (folder / "results" / child.name).symlink_to(child)
    # bench reports are rewritten by the pages' commands: copies, never the committed files
    shutil.copytree(REPO / "results" / "bench", folder / "results" / "bench")
    (folder / "data").mkdir()
    for name in DATASET_NAMES:
        (folder / "data" / name).symlink_to(dataset)
    if demo is not None:
        (folder / "data" / "demo").symlink_to(demo / "data" / "demo")
        (folder / "runs").mkdir()
        shutil.copytree(demo / "runs" / "demo", folder / "runs" / "demo", copy_function=os.symlink)
        shutil.copy(demo / "runs" / "demo" / "awc.onnx", folder / "awc.onnx")


def demo_block() -> Block:
    (block,) = [b for b in blocks(REPO / "README.md") if b.info in RUN and "make demo" in b.text]
    return block


@pytest.fixture(scope="session")
def demo_outputs(tmp_path_factory, tiny_dataset) -> Path:
    """README's `make demo` block, run once in a folder of its own: the artefacts the pages use."""
    folder = tmp_path_factory.mktemp("demo")
    seed_folder(folder, None, tiny_dataset)
    page = PageRun(folder, sys.executable)
    block = demo_block()
    assert block.illustration is None, "README's make demo block is run"
    page.run_block(block)
    for path in ("runs/demo/awc.onnx", "runs/demo/poses.jsonl", "runs/demo/keys/server.key",
                 "runs/demo/train/best.pt", "runs/demo/rehab-report.json"):
        assert (folder / path).exists(), f"make demo did not leave {path}"
    report = json.loads((folder / "runs/demo/rehab-report.json").read_text())
    assert report["segments"] and all(s["exercise"] in ("A12", "A11", "A10") for s in report["segments"]), (
        "the demo's report shows a P2 exercise, not the unknown-exercise mode")
    print("\n".join(f"{s:7.1f} s  {line}" for line, s in page.timings))
    return folder


RUNNABLE_PAGES = [p for p in PAGES if any(b.info in RUN and b.illustration is None for b in blocks(p))]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("page", RUNNABLE_PAGES, ids=rel)
def test_the_page_runs_as_written(page, demo_outputs, tiny_dataset, tmp_path):
    seed_folder(tmp_path, demo_outputs, tiny_dataset)
    run = PageRun(tmp_path, sys.executable)
    demo = demo_block()
    for block in blocks(page):
        if block.info in RUN and block.illustration is None and (block.path, block.line) != (demo.path, demo.line):
            run.run_block(block)   # README's make demo block ran once, for every page: demo_outputs
    run.stop_all()
    print("\n".join(f"{s:7.1f} s  {line}" for line, s in run.timings))

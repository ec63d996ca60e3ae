"""Orchestrator - the demo's parts, started in order and stopped in reverse.

``semirec demo``: the embedded stack; the world (with held-out new videos); item vectors
(cached) written to Redis; the SEMI ranker trained with quick settings (cached); exported to
Triton; the ingest, catalog and recommendation agents and the incremental trainer as separate
processes; then the closed loop (:mod:`semirec.sim.loop`) and the end-of-run summary and report
(:mod:`semirec.sim.report`).

Every part, like every service of the stack, runs in its own session (process group): a
terminal's Ctrl-C reaches only the demo, which stops the agents and the trainer first (SIGTERM
together, a bounded wait, then SIGKILL) and the stack after them (Triton, redis, the broker),
one line per part; had the broker shared our process group it would die first and the agents
would retry it until killed. ``PR_SET_PDEATHSIG`` takes every part down if the demo is killed.

A part that is not built yet (a CLI verb or worker agent that does not exist) is reported as
missing and the run goes on without it; a part that exists but fails to start stops the run
with its log's tail.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semirec.core.settings import Settings
from semirec.core.stack import LOCAL_GROUP_TIMINGS, EmbeddedStack, die_with_parent, free_port
from semirec.sim.loop import CATALOG_GROUP, INGEST_GROUP, RECOMMEND_GROUP, hour_aligned_offset

# SEMI with explicit content similarity, the session block's similarity, the user's completion
# rate on like content (incomplete watches) and item identity (hashed id bias + smoothed
# completion rate; the incremental trainer fine-tunes it with counts from the samples stream):
# chosen on validation AUC, docs/results.md "Issue 21" (+ses, +usr)
TRAIN_MODEL = "semi_ccl+sim+ses+usr+id"
KEEP_RUNS = 5  # run folders kept under the demo cache
RANK_TIMEOUT_MS = 1000  # the demo's Triton budget (production default 100 ms); env overrides
PART_STOP_TIMEOUT_S = 6.0  # SIGTERM to the agents and the trainer, then SIGKILL
HUNG_DUMP_S = 0.5  # a part that did not stop: time to write its stacks (SIGUSR1) before SIGKILL


class DemoError(RuntimeError):
    """A part of the demo could not be started or failed."""


@dataclass(frozen=True, slots=True)
class DemoOptions:
    users: int = 300
    minutes: float = 3.0  # length of the live phase
    shift_at: float = 1 / 3  # the interest shift, as a fraction of the live phase
    seed: int = 0
    rate: float = 200.0  # history events per second
    sessions_per_s: float = 3.0
    new_videos: int = 30
    size: str = "demo"
    train: bool = True
    cache_dir: Path = field(default_factory=lambda: Path(
        os.environ.get("SEMIREC_DEMO_CACHE", Path.home() / ".cache" / "semirec" / "demo")))
    report_dir: Path | None = None
    keep: bool = False
    quick: bool = True  # the ranker's training budget: quick (default) or the full scaled one
    encoder: Path | None = None  # an item-encoder checkpoint; None: pre-train one on the catalog
    pretrain_encoder: bool = True  # False (and no encoder): the seeded untrained fusion


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Part:
    """One child process of the demo, in its own process group, logging to a file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    ready_port: int | None = None
    proc: subprocess.Popen | None = None
    hung: str | None = None  # a killed part's log tail: its threads' stacks when it was killed

    @property
    def label(self) -> str:
        return self.name if self.name == "trainer" else f"{self.name} worker"

    def start(self) -> None:
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         preexec_fn=die_with_parent(os.getpid()))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                code = self.proc.returncode if self.proc else None
                raise DemoError(f"{self.name} exited with code {code} while starting; log {self.log}:\n"
                                f"{_tail(self.log)}")
            if self.ready_port is None:
                return
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.ready_port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise DemoError(f"{self.name} was not ready after {timeout:.0f}s; log {self.log}:\n{_tail(self.log)}")

    def terminate(self) -> bool:
        """SIGTERM the part's process group; False if it had exited already (or never started)."""
        if not self.alive():
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        return True

    def finish(self, deadline: float) -> str:
        """Wait for a terminated part until ``deadline`` (monotonic), then SIGKILL its group;
        kill what is left of the group either way. Returns "stopped", "killed" or "exited"."""
        if self.proc is None:
            return "exited"
        how = "stopped"
        try:
            self.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            how = "killed"
            with contextlib.suppress(ProcessLookupError):  # its threads' stacks into its log
                os.kill(self.proc.pid, signal.SIGUSR1)
                time.sleep(HUNG_DUMP_S)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.hung = _tail(self.log, 60)
        with contextlib.suppress(ProcessLookupError):  # its children, if it left any
            os.killpg(self.proc.pid, signal.SIGKILL)
        return how

    def stop(self, timeout: float = PART_STOP_TIMEOUT_S) -> str:
        running = self.terminate()
        how = self.finish(time.monotonic() + timeout)
        return how if running else "exited"


def verb_exists(name: str) -> bool:
    from semirec.cli import VERBS

    return name in VERBS


def agent_exists(name: str) -> bool:
    from semirec.cli.worker import AGENT_PLUGINS

    return name in AGENT_PLUGINS


def ranker_cache_key(world_params: dict[str, Any], encoder_version: str, quick: bool = True) -> str:
    """Cache key of the demo's ranker: the world, the encoder, the budget, the checkpoint format
    and the model's settings (:func:`scaled` on a fixed size, so a changed default retrains)."""
    from semirec.trainer.nets import configs
    from semirec.trainer.nets.checkpoint import FORMAT

    recipe = configs.scaled(configs.paper(TRAIN_MODEL), 100_000, 100_000)
    recipe = configs.quick(recipe) if quick else recipe
    body = json.dumps({"world": world_params, "encoder": encoder_version, "model": TRAIN_MODEL,
                       "quick": quick, "seed": 0, "checkpoint_format": FORMAT,
                       "settings": recipe.to_dict()}, sort_keys=True, default=str)
    return hashlib.blake2b(body.encode(), digest_size=8).hexdigest()


def train_ranker(world: Any, vectors: Any, out: Path, tick: Callable[[int, int], None],
                 quick: bool = True) -> dict[str, Any]:
    """Train SEMI (CCL pre-trained; quick or full budget) on the world's history; save a checkpoint.

    No truth is passed: the model learns from the events only."""
    import torch

    from semirec.trainer.nets import checkpoint
    from semirec.trainer.offline.evaluate import model_config, prepare, run_model_trained, work_units

    torch.set_num_threads(1)
    prepared = prepare("world", world.items, world.events, vectors)
    cfg = model_config(TRAIN_MODEL, prepared, quick)
    total = work_units(TRAIN_MODEL, cfg, prepared)
    done = 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        tick(done, total)

    model, metrics = run_model_trained(TRAIN_MODEL, prepared, cfg, 0, step)
    checkpoint.save(out, model, cfg, {"data": "demo-world", "seed": 0, "metrics": metrics})
    return {k: metrics[k] for k in ("auc", "hr@3") if k in metrics}


async def write_vectors(settings: Settings, items: list[dict[str, Any]], vectors: Any, version: str) -> int:
    from semirec.core.contracts import Domain
    from semirec.core.item_store import ItemStore, ItemVector

    store = ItemStore.from_url(settings.redis_url)
    try:
        records = [ItemVector(it["item_id"], Domain(it["domain"]), vectors[i], version)
                   for i, it in enumerate(items)]
        titles = {it["item_id"]: it["title"] for it in items}
        n = 0
        for lo in range(0, len(records), 500):
            n += await store.put_many(records[lo:lo + 500],
                                      {r.item_id: titles[r.item_id] for r in records[lo:lo + 500]})
        return n
    finally:
        await store.close()


def demo_encoder_path(world: Any, cache_dir: Path) -> Path:
    """Where the demo caches the encoder pre-trained on ``world.items``:
    ``cache_dir/encoders/<digest of the catalog and the pre-training recipe>``."""
    from semirec.encoders.pretrain import RECIPE
    from semirec.trainer.offline.vectors import catalog_digest

    return Path(cache_dir) / "encoders" / catalog_digest(world.items, f"pretrain-{RECIPE}")


def demo_encoder(world: Any, cache_dir: Path, run_dir: Path, console: Any) -> Path:
    """The encoder pre-trained on ``world.items`` (``semirec encoders pretrain``), cached at
    :func:`demo_encoder_path`; trains it when it is not cached (logs in ``run_dir``)."""
    ckpt = demo_encoder_path(world, cache_dir)
    if (ckpt / "encoder.safetensors").is_file():
        return ckpt
    run_dir.mkdir(parents=True, exist_ok=True)
    items = run_dir / "items.jsonl"
    items.write_text("".join(json.dumps(it) + "\n" for it in world.items))
    log = run_dir / "encoder-pretrain.log"
    console.print(f"{time.strftime('%H:%M:%S')} pre-training the item encoder on "
                  f"{len(world.items):,} items (cached afterwards; a few minutes)")
    with open(log, "wb") as out:  # on a terminal its own progress bars show
        res = subprocess.run([sys.executable, "-m", "semirec", "encoders", "pretrain",
                              "--items", str(items), "--out", str(ckpt), "--json"],
                             stdout=out, timeout=1800,
                             stderr=None if console.is_terminal else subprocess.STDOUT)
    if res.returncode != 0:
        raise DemoError(f"encoder pre-training failed (code {res.returncode}); log {log}:\n"
                        f"{_tail(log)}")
    return ckpt


def prune_runs(runs: Path, keep: int) -> list[Path]:
    """Remove all but the newest ``keep`` run folders (logs, model repository, report)."""
    folders = sorted((p for p in runs.iterdir() if p.is_dir()), key=lambda p: p.name)
    gone = folders[:-keep] if keep else folders
    for folder in gone:
        shutil.rmtree(folder, ignore_errors=True)
    return gone


class Demo:
    """One run of the demo; :meth:`run` returns the summary (see :mod:`semirec.sim.report`)."""

    def __init__(self, opts: DemoOptions, console: Any) -> None:
        self.opts = opts
        self.console = console
        self.stack: EmbeddedStack | None = None
        self.parts: list[Part] = []
        self.missing: list[str] = []
        self.facts: dict[str, Any] = {}
        self.run_dir = Path(opts.cache_dir) / "runs" / time.strftime("%Y%m%dT%H%M%S")

    # -- steps ---------------------------------------------------------------------------------
    @contextmanager
    def _step(self, message: str) -> Iterator[None]:
        """A spinner on a terminal; a timestamped line otherwise (logs, --json runs)."""
        if self.console.is_terminal:
            with self.console.status(message):
                yield
        else:
            self.console.print(f"{time.strftime('%H:%M:%S')} {message}")
            yield

    def world(self) -> Any:
        from semirec.worlds import load_world

        with self._step("generating the world"):
            return load_world("world", seed=self.opts.seed, size=self.opts.size, users=self.opts.users,
                              new_videos=self.opts.new_videos)

    def item_encoder(self, world: Any) -> Path | None:
        """The encoder checkpoint every part uses (SEMIREC_ENCODER_CHECKPOINT): given, or
        ``SEMIREC_ENCODER_CHECKPOINT``, or pre-trained on the catalog (without the held-out new
        videos) and cached (:func:`demo_encoder`)."""
        ckpt = self.opts.encoder or (Path(os.environ["SEMIREC_ENCODER_CHECKPOINT"])
                                     if os.environ.get("SEMIREC_ENCODER_CHECKPOINT") else None)
        if ckpt is None and self.opts.pretrain_encoder:
            ckpt = demo_encoder(world, self.opts.cache_dir, self.run_dir, self.console)
        if ckpt is not None:
            os.environ["SEMIREC_ENCODER_CHECKPOINT"] = str(Path(ckpt).resolve())  # parts inherit it
            self.facts["encoder"] = str(ckpt)
        else:
            self.facts["encoder"] = "untrained fusion"
        return ckpt

    def vectors(self, world: Any) -> tuple[Any, str]:
        from semirec.encoders import encoder_version
        from semirec.trainer.offline.vectors import item_vectors

        with self._step(f"encoding the catalog ({len(world.items):,} items; cached after the "
                                 "first run)"):
            return item_vectors(world.items), encoder_version()  # cache shared with `semirec evaluate`

    def ranker(self, world: Any, vectors: Any, version: str) -> Path | None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        if not self.opts.train:
            self.missing.append("ranker: not trained (--no-train)")
            return None
        out = self.opts.cache_dir / "rankers" / ranker_cache_key(world.params, version, self.opts.quick)
        if (out / "model.safetensors").is_file():
            self.console.print(f"ranker: cached checkpoint {out}")
            return out
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=self.console, transient=True) as bar:
            budget = "quick" if self.opts.quick else "full budget"
            task = bar.add_task(f"training {TRAIN_MODEL} ({budget}; cached afterwards)", total=None)
            if not self.console.is_terminal:
                self.console.print(f"{time.strftime('%H:%M:%S')} training {TRAIN_MODEL} ({budget})")
            metrics = train_ranker(world, vectors, out,
                                   lambda done, total: bar.update(task, completed=done, total=total),
                                   quick=self.opts.quick)
        self.console.print(f"ranker trained: {metrics} -> {out}")
        return out

    def export(self, ckpt: Path | None, env: dict[str, str]) -> None:
        if ckpt is None:
            return
        if not verb_exists("model"):
            self.missing.append("ranker on Triton: `semirec model export` is not built yet "
                                "(recommendations come from the fallback ranking)")
            return
        log = self.run_dir / "export.log"
        with self._step("exporting the ranker to Triton and promoting it"):
            res = subprocess.run([sys.executable, "-m", "semirec", "model", "export", str(ckpt),
                                  "--promote", "--json"], env=env, capture_output=True, text=True,
                                 timeout=300)
        log.write_text(res.stdout + res.stderr)
        if res.returncode != 0:
            raise DemoError(f"`semirec model export --promote` failed (code {res.returncode}):\n"
                            f"{res.stderr[-2000:]}")
        try:
            self.facts["export"] = json.loads(res.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            self.facts["export"] = res.stdout[-500:]

    def start_parts(self, env: dict[str, str]) -> None:
        agents = [("ingest", INGEST_GROUP), ("catalog", CATALOG_GROUP), ("recommend", RECOMMEND_GROUP)]
        for agent, group in agents:
            if not agent_exists(agent):
                self.missing.append(f"{agent} agent: `semirec worker --agent {agent}` is not built yet")
                continue
            port = free_port()
            part_env = {**env, "SEMIREC_CONSUMER_GROUP": group, "SEMIREC_METRICS_PORT": str(port)}
            if agent == "recommend":
                part_env["SEMIREC_PUBLISH_CANDIDATES"] = "1"  # the audience scores the same candidates
                # one shared 2-core machine runs everything here: a wider budget per Triton call
                part_env.setdefault("SEMIREC_RANK_TIMEOUT_MS", str(RANK_TIMEOUT_MS))
            self.parts.append(Part(agent, [sys.executable, "-m", "semirec", "worker", "--agent", agent,
                                           "--loglevel", "warning"],
                                   part_env, self.run_dir / f"{agent}.log", port))
        if verb_exists("trainer") and "export" not in self.facts:
            # it starts from the serving ranker: without one (--no-train) it would exit at once
            self.missing.append("incremental trainer: no ranker on Triton to start from (--no-train)")
        elif verb_exists("trainer"):
            self.parts.append(Part("trainer", [sys.executable, "-m", "semirec", "trainer", "run",
                                               "--state", str(self.run_dir / "trainer-state")],
                                   env, self.run_dir / "trainer.log"))
        else:
            self.missing.append("incremental trainer: `semirec trainer run` is not built yet "
                                "(no promotions during the run)")
        for part in self.parts:
            part.start()
        with self._step(f"starting {', '.join(p.name for p in self.parts)}"):
            for part in self.parts:
                part.wait_ready(timeout=120)

    def dead_parts(self) -> list[str]:
        dead = [p.name for p in self.parts if not p.alive()]
        if self.stack is not None:
            dead += [f"{name} (stack)" for name in self.stack.dead()]
        return dead

    # -- the run -------------------------------------------------------------------------------
    def run(self, live_view: bool = True) -> dict[str, Any]:
        from semirec.sim.audience import Audience
        from semirec.sim.live import LiveState
        from semirec.sim.loop import ClosedLoop, LoopConfig
        from semirec.sim.quality import QualityLog
        from semirec.sim.report import summarize, write_report
        from semirec.worlds.live import LiveWorld

        self.run_dir.mkdir(parents=True, exist_ok=True)
        prune_runs(self.run_dir.parent, keep=KEEP_RUNS)
        started = time.time()
        world = self.world()
        self.item_encoder(world)
        vectors, enc_version = self.vectors(world)
        models = self.run_dir / "models"
        models.mkdir(exist_ok=True)
        with self._step("starting the embedded stack (Tansu, redis-server, tritonserver)"):
            self.stack = EmbeddedStack(model_repository=models, on_stop=self._stopped)
            self.stack.start()
        env = {**os.environ, **self.stack.addresses.env(), **LOCAL_GROUP_TIMINGS,
               "SEMIREC_MODEL_REPOSITORY": str(models)}
        settings = Settings.from_env(env)
        with self._step("writing item vectors to Redis"):
            asyncio.run(write_vectors(settings, world.items, vectors, enc_version))
        ckpt = self.ranker(world, vectors, enc_version)
        self.export(ckpt, env)
        self.start_parts(env)
        for line in self.missing:
            self.console.print(f"[yellow]missing:[/] {line}")

        state = LiveState(missing_parts=list(self.missing))
        quality = QualityLog()
        live = LiveWorld(world, seed=self.opts.seed)
        offset = hour_aligned_offset(time.time(), world.events[-1].ts)  # whole hours: same hour blocks
        audience = Audience(live, offset=offset, seed=self.opts.seed)
        cfg = LoopConfig(rate=self.opts.rate, live_s=self.opts.minutes * 60,
                         sessions_per_s=self.opts.sessions_per_s, shift_at=self.opts.shift_at)
        titles = {it["item_id"]: it["title"] for it in world.items + world.new_items}
        loop = ClosedLoop(settings, world, live, audience, cfg, state, quality, offset=offset,
                          alive=self.dead_parts, titles=titles)
        error: str | None = None
        try:
            asyncio.run(self._run_loop(loop, state, live_view))
        except Exception as exc:  # summarised and reported; the run fails its checks
            error = f"{type(exc).__name__}: {exc}"
        summary = summarize(loop.result, quality, audience, state, missing=self.missing,
                            crashed=loop.crashed, error=error, started=started,
                            facts={**self.facts, "run_dir": str(self.run_dir),
                                   "world": {"users": self.opts.users, "events": len(world.events),
                                             "items": len(world.items),
                                             "new_videos": len(world.new_items)}})
        report_dir = self.opts.report_dir or self.run_dir / "report"
        summary["report"] = str(write_report(report_dir, summary, loop.result, quality, state))
        return summary

    async def _run_loop(self, loop: Any, state: Any, live_view: bool) -> None:
        from rich.live import Live

        from semirec.sim.live import render

        task = asyncio.create_task(loop.run())
        try:
            if not live_view:  # a progress line every 10 s instead of the live view
                while not task.done():
                    await asyncio.wait([task], timeout=10)
                    q = state.quality_all or {}
                    self.console.print(
                        f"{time.strftime('%H:%M:%S')} {state.phase}: events {state.events.total:,}, "
                        f"recommendations {state.recs.total:,}, "
                        f"lag {state.ingest_lag}/{state.recommend_lag}, "
                        f"online completion semirec {q.get('semirec', '-')} popularity "
                        f"{q.get('popularity', '-')} oracle {q.get('oracle', '-')}")
            else:
                with Live(render(state), console=self.console, refresh_per_second=2,
                          transient=False) as view:
                    while not task.done():
                        view.update(render(state))
                        await asyncio.sleep(0.5)
                    view.update(render(state))
            await task
        finally:
            # Ctrl-C cancels this coroutine: stop the loop here, while its Kafka clients' own
            # tasks still run, so it closes them; asyncio.run would cancel every task at once,
            # and a client left open holds the broker's shutdown for its 5 s drain
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def keep_running(self) -> None:
        assert self.stack is not None
        self.console.print("\n[bold]running[/]; in another shell: export "
                           + " ".join(f"{k}={v}" for k, v in self.stack.addresses.env().items())
                           + f"\nlogs in {self.run_dir}. Ctrl-C stops everything.")
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})

    def _stopped(self, label: str, seconds: float, how: str) -> None:
        self.console.print(f"{how} {label} ({seconds:.1f} s)", highlight=False)

    def stop(self) -> None:
        """Stop the agents and the trainer (SIGTERM together, one bounded wait), then the stack
        (Triton, redis, the broker), one line per part; the broker outlives its consumers."""
        parts, self.parts = list(reversed(self.parts)), []
        t0 = time.monotonic()
        running = {part.name: part.terminate() for part in parts}
        for part in parts:
            how = part.finish(t0 + PART_STOP_TIMEOUT_S)
            self._stopped(part.label, time.monotonic() - t0, how if running[part.name] else "exited")
            if part.hung is not None:  # where it hung, for the report of a failed stop
                self.console.print(f"  {part.label} log, last lines ({part.log}):\n"
                                   + "\n".join(f"  | {line}" for line in part.hung.splitlines()),
                                   highlight=False, markup=False)
        if self.stack is not None:
            self.stack.stop()

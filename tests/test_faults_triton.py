"""Triton faults in one line (semirec.core.faults): `semirec model ...`, `semirec trainer run` and the
recommendation worker with tritonserver unreachable, a bad address, a model repository Triton
does not serve, and no model loaded."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pytest

from semirec.core.faults import EXIT_CONFIG, EXIT_UNAVAILABLE
from semirec.core.stack import free_port
from semirec.serving.ranking import TritonRanker
from tests.conftest import settings_env
from tests.test_faults import cli
from tests.workers import start_worker, stop

pytestmark = pytest.mark.fault


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository (not the one tritonserver serves) with version 1 as `serving`."""
    from benchmarks.faults_serving import toy_ranker
    from semirec.trainer.registry.repository import ModelRepository

    root = tmp_path_factory.mktemp("elsewhere")
    repo = ModelRepository(root / "models")
    version = repo.export(toy_ranker(root / "ckpt", dim=32))
    (repo.dir / "aliases.json").write_text(json.dumps({"serving": version,
                                                       "last_version": version}))
    return root / "models"


def one_line(res, code: int, *texts: str) -> str:
    assert res.returncode == code, res.stderr[-3000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr[-3000:]
    assert all(t in lines[0] for t in texts), lines[0]
    return lines[0]


@pytest.mark.parametrize("argv", [("model", "load"), ("model", "promote", "1"),
                                  ("model", "rollback")])
def test_model_verbs_with_triton_unreachable_or_a_bad_address(settings, exported, argv) -> None:
    env = {**settings_env(settings), "SEMIREC_MODEL_REPOSITORY": str(exported)}
    closed = {**env, "SEMIREC_TRITON_GRPC": f"127.0.0.1:{free_port()}"}
    if argv[1] == "rollback":  # no previous version: the verb's own failure, before Triton
        res = cli(closed, *argv)
        assert res.returncode == 1 and "no previous version" in res.stderr
        return
    started = time.monotonic()
    one_line(cli(closed, *argv), EXIT_UNAVAILABLE, "cannot reach Triton at 127.0.0.1:",
             "SEMIREC_TRITON_GRPC")
    assert time.monotonic() - started < 30
    verbose = cli(closed, "-v", *argv)
    assert verbose.returncode == EXIT_UNAVAILABLE and "Traceback" in verbose.stderr
    one_line(cli({**env, "SEMIREC_TRITON_GRPC": "http://127.0.0.1:8001"}, *argv), EXIT_CONFIG,
             "SEMIREC_TRITON_GRPC='http://127.0.0.1:8001'")


def test_a_repository_tritonserver_does_not_serve_is_a_configuration_error(
        settings, exported) -> None:
    """SEMIREC_MODEL_REPOSITORY is not tritonserver's --model-repository: Triton cannot find
    the version it is asked to load."""
    env = {**settings_env(settings), "SEMIREC_MODEL_REPOSITORY": str(exported)}
    one_line(cli(env, "model", "promote", "1"), EXIT_CONFIG,
             "could not load the model from its repository", "SEMIREC_MODEL_REPOSITORY")


def test_trainer_start_with_triton_unreachable_is_one_line(settings, exported, tmp_path) -> None:
    env = {**settings_env(settings), "SEMIREC_MODEL_REPOSITORY": str(exported),
           "SEMIREC_TRITON_GRPC": f"127.0.0.1:{free_port()}",
           "SEMIREC_TRAINER_STATE_DIR": str(tmp_path / "state")}
    one_line(cli(env, "trainer", "run", "--max-rounds", "1"), EXIT_UNAVAILABLE,
             "cannot reach Triton at 127.0.0.1:")


async def test_the_recommendation_worker_serves_the_fallback_and_says_why(settings, redis_client,
                                                                          tmp_path) -> None:
    """Triton unreachable at start: one warning line, the worker keeps running (fallback);
    a bad address: exit 78 at once."""
    log = tmp_path / "worker.log"
    down = replace(settings, triton_grpc=f"127.0.0.1:{free_port()}")
    proc = start_worker(down, log, "--agent", "recommend")
    try:
        deadline = time.monotonic() + 90
        while not all(t in log.read_text(errors="replace")  # warned, and started all the same
                      for t in ("serving the fallback", "[^Worker]: Ready")):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
    finally:
        code = stop(proc)
    text = log.read_text()
    assert code == 0, (code, text[-3000:])
    line = next(x for x in text.splitlines() if "serving the fallback" in x)
    assert "cannot reach Triton at 127.0.0.1:" in line and "Traceback" not in text
    bad = {**settings_env(settings), "SEMIREC_TRITON_GRPC": "http://triton:8001"}
    one_line(cli(bad, "worker", "--agent", "recommend"), EXIT_CONFIG, "SEMIREC_TRITON_GRPC")


async def test_a_model_triton_does_not_have_is_named(stack) -> None:
    ranker = TritonRanker(stack.addresses.triton_grpc, model="no-such-model", timeout_s=2)
    try:
        problem = await ranker.problem()
    finally:
        await ranker.close()
    assert problem is not None and "has no no-such-model loaded" in problem
    ranker = TritonRanker(f"127.0.0.1:{free_port()}", timeout_s=0.5)
    try:
        assert "cannot reach Triton" in (await ranker.problem() or "")
    finally:
        await ranker.close()


def test_classification_of_sasl_and_triton_errors() -> None:
    """Our classification alone (a broker refusing SASL cannot be run here)."""
    import aiokafka.errors as kex
    from tritonclient.utils import InferenceServerException

    from semirec.core.faults import EXIT_AUTH, classify

    where = {"kafka": "k:9093", "redis_url": "redis://r:6379/0", "triton": "t:8001"}
    for exc in (kex.for_code(58)("bad user"), kex.AuthenticationFailedError()):
        sasl = classify(exc, **where)
        assert sasl is not None and sasl.exit_code == EXIT_AUTH and "SASL" in sasl.message, exc
    cases = {
        ("StatusCode.UNAVAILABLE", "failed to connect to all addresses"):
            (EXIT_UNAVAILABLE, "cannot reach Triton at t:8001"),
        ("StatusCode.NOT_FOUND", "Request for unknown model: 'ranker' is not found"):
            (EXIT_UNAVAILABLE, "has no ranker loaded"),
        ("StatusCode.INTERNAL", "failed to load 'ranker', failed to poll from model repository"):
            (EXIT_CONFIG, "SEMIREC_MODEL_REPOSITORY"),
    }
    for (status, text), (code, part) in cases.items():
        assert classify(RuntimeError("promotion failed"), **where) is None  # not ours
        try:
            try:
                raise InferenceServerException(text, status=status)
            except InferenceServerException as inner:
                raise RuntimeError("Triton did not load ranker version 3") from inner
        except RuntimeError as exc:
            fault = classify(exc, **where)
        assert fault is not None and fault.exit_code == code and part in fault.message, fault
    assert classify(InferenceServerException("odd", status="StatusCode.UNKNOWN"), **where) is None


async def test_a_failed_hot_swap_is_retried_and_never_reverts_the_learner(tmp_path) -> None:
    """The trainer's logic alone (a repository whose promote fails, then succeeds): a round
    whose promotion failed (Triton down) does not make the next round 'follow' the old
    serving version; the promotion is retried until it succeeds."""
    from semirec.core.settings import Settings
    from semirec.trainer.online.service import OnlineTrainer
    from semirec.trainer.registry.repository import PromotionError

    class Repo:
        triton_grpc = "127.0.0.1:1"

        def __init__(self) -> None:
            self.serving, self.calls, self.fail = 1, [], 2

        def aliases(self) -> dict[str, int]:
            return {"serving": self.serving}

        def promote(self, version: int, *, fence: int | None = None) -> dict[str, float]:
            self.calls.append(version)
            if self.fail:
                self.fail -= 1
                raise PromotionError("Triton did not load ranker version 2") from \
                    _unavailable()
            self.serving = version
            return {"load_s": 0.0, "first_answer_s": 0.0}

    repo = Repo()
    trainer = OnlineTrainer(Settings(), state_dir=tmp_path, repo=repo)  # type: ignore[arg-type]
    trainer.learner = object()  # type: ignore[assignment]  # must not be replaced
    trainer.serving_version, trainer.unpromoted = 2, (2, 1)
    learner = trainer.learner
    await trainer._retry_promotion()  # Triton still down
    await trainer._follow_manual_promotions()
    assert trainer.unpromoted == (2, 1) and trainer.learner is learner and repo.calls == [2]
    await trainer._retry_promotion()  # still down
    await trainer._retry_promotion()  # back
    assert trainer.unpromoted is None and repo.serving == 2 and repo.calls == [2, 2, 2]
    await trainer._follow_manual_promotions()
    assert trainer.learner is learner  # serving == our version: nothing to follow
    assert "cannot reach Triton at 127.0.0.1:1" in trainer._why(_wrapped())
    # a version promoted by hand meanwhile wins over the retry
    trainer.unpromoted, repo.serving = (3, 1), 4
    await trainer._retry_promotion()
    assert trainer.unpromoted is None and 3 not in repo.calls


def _unavailable() -> Exception:
    from tritonclient.utils import InferenceServerException

    return InferenceServerException("failed to connect to all addresses",
                                    status="StatusCode.UNAVAILABLE")


def _wrapped() -> Exception:
    from semirec.trainer.registry.repository import PromotionError

    try:
        raise PromotionError("Triton did not load ranker version 2") from _unavailable()
    except PromotionError as exc:
        return exc

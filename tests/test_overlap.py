"""The training loop's work beside a train step (Source.meanwhile; online: trainer.overlap_intake)."""

from __future__ import annotations

import threading

import pytest
import torch

from conftest import datamove
from datamove.config import StudyConfig
from datamove.training.distributed import Dist
from datamove.training.loop import Source, Training


class Scripted(Source):
    """Batches from memory for ``n`` steps, logging what the loop calls, in order, and on which thread."""

    waits = False

    def __init__(self, cfg: StudyConfig, n: int, *, fail_at: int | None = None):
        self.cfg, self.left, self.fail_at = cfg, n, fail_at
        self.log: list[tuple[str, str]] = []
        self.done = 0
        self.x = torch.rand(cfg.trainer.batch_size, cfg.problem.n_inputs)  # [B, n_inputs]
        self.y = torch.rand(cfg.trainer.batch_size, *cfg.problem.sample_shape)  # [B, F, ny, nx]

    def _note(self, what: str) -> None:
        self.log.append((what, threading.current_thread().name))

    def poll(self):
        self._note("poll")
        return self.left == 0, self.left > 0

    def batch(self):
        self._note("batch")
        self.left -= 1
        return self.x, self.y

    def meanwhile(self):
        return self._work

    def _work(self) -> None:
        self._note("meanwhile")
        if self.fail_at is not None and self.done == self.fail_at:
            raise RuntimeError("intake broke")

    def trained(self, all_done: bool) -> None:
        self.done += 1
        self._note("trained")

    def metrics(self):
        return {}


@pytest.fixture
def cfg(tiny_config):
    path = tiny_config(trainer={"log_every": 1000, "checkpoint_every": 0})
    datamove("make-heldout", "--config", path)
    return StudyConfig.load(path)


def test_meanwhile_runs_on_its_own_thread_between_draw_and_trained(cfg):
    source = Scripted(cfg, 3)
    run = Training(cfg=cfg, dd=Dist(), label="test")
    run.run(source)
    main = threading.current_thread().name
    assert [w for w, _ in source.log] == ["poll", "batch", "meanwhile", "trained"] * 3 + ["poll"]
    threads = {w: {t for v, t in source.log if v == w} for w, _ in source.log}
    assert threads["meanwhile"] != {main} and len(threads["meanwhile"]) == 1, threads
    assert threads["poll"] == threads["batch"] == threads["trained"] == {main}
    assert run.batch == 3
    assert run._beside is None  # shut down when the run ends
    assert not [t for t in threading.enumerate() if t.name.startswith("intake")]


def test_an_error_beside_the_step_ends_the_run(cfg):
    source = Scripted(cfg, 5, fail_at=1)
    run = Training(cfg=cfg, dd=Dist(), label="test")
    with pytest.raises(RuntimeError, match="intake broke"):
        run.run(source)
    assert source.done == 1 and run.batch == 1  # the failed step's trained() never came
    assert not [t for t in threading.enumerate() if t.name.startswith("intake")]

"""Adaptive parameter sampling (parameters.sampler: adaptive): proposals, draws, the trainer's
per-member loss, and a real online study whose later members draw from the trainer's proposals."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from datamove.config import ConfigError, StudyConfig, validate_config
from datamove.models import Surrogate, build_network
from datamove.reservoir import make_buffer
from datamove.sampling import proposals
from datamove.training.records import Ledger
from datamove.training.steering import Steering, note_draws

from conftest import TINY, _merge, datamove, snakemake


def study(tmp_path, **adaptive_keys) -> StudyConfig:
    raw = _merge(TINY, {"results_dir": str(tmp_path / "results"), "data_dir": str(tmp_path / "data"),
                        "ensemble": {"n_members": 400},
                        "parameters": {"sampler": "adaptive", "adaptive": adaptive_keys}})
    return StudyConfig.from_dict(validate_config(raw))


def proposal(cfg: StudyConfig, losses: dict[int, float], version: int = 1) -> proposals.Proposal:
    params = {m: cfg.ensemble.params(m) for m in losses}
    return proposals.Proposal.make(version=version, batch=10 * version, params=params, losses=losses,
                                  ranges=cfg.ensemble.ranges, settings=cfg.ensemble.adaptive)


def test_config_keys_and_base_sampler(tmp_path):
    cfg = study(tmp_path, base="uniform", top_k=3)
    assert cfg.ensemble.adaptive.top_k == 3 and cfg.ensemble.adaptive.publish_every == 100
    # Held-out and test members keep a fixed design: the base sampler's.
    assert cfg.ensemble.sampler == cfg.heldout.sampler == cfg.test.sampler == "uniform"
    assert cfg.heldout.adaptive is None and cfg.test.adaptive is None
    with pytest.raises(ConfigError, match="parameters.adaptive.uniform_share"):
        validate_config({"parameters": {"sampler": "adaptive", "adaptive": {"uniform_share": 1.5}}})
    with pytest.raises(ConfigError, match="parameters.adaptive"):
        validate_config({"parameters": {"adaptive": {"share": 0.5}}})


def test_proposal_is_centred_on_the_members_of_highest_loss(tmp_path):
    cfg = study(tmp_path, top_k=2)
    p = proposal(cfg, {0: 1.0, 1: 3.0, 2: 0.5, 3: 3.0})
    # Highest first, ties by member id; weights proportional to the losses.
    assert p.members == (1, 3) and p.weights == (0.5, 0.5)
    assert np.allclose(p.centres[0], cfg.ensemble.params(1))
    p = proposal(cfg, {0: 1.0, 1: 3.0})
    assert p.members == (1, 0) and np.allclose(p.weights, (0.75, 0.25))
    with pytest.raises(ValueError, match="no member has a loss"):
        proposal(cfg, {})


def test_draws_are_reproducible_and_stay_in_range(tmp_path):
    cfg = study(tmp_path, spread=0.5, uniform_share=0.0)
    p = proposal(cfg, {0: 1.0, 1: 2.0})
    draws = [proposals.draw(cfg.ensemble, m, p) for m in range(40)]
    again = [proposals.draw(cfg.ensemble, m, p) for m in range(40)]
    assert all(np.array_equal(a[0], b[0]) and a[2] == b[2] for a, b in zip(draws, again))
    pts = np.stack([d[0] for d in draws])
    low, high = np.asarray(cfg.ensemble.ranges).T
    assert np.all(pts >= low) and np.all(pts <= high)  # reflected into the ranges, even with a wide spread
    assert all(d[1] == "proposal" for d in draws)
    # Another version of the proposal is another draw; another member too.
    other = proposals.draw(cfg.ensemble, 0, proposal(cfg, {0: 1.0, 1: 2.0}, version=2))
    assert not np.array_equal(other[0], draws[0][0]) and not np.array_equal(draws[0][0], draws[1][0])


def test_draws_follow_the_mixture_and_keep_a_uniform_share(tmp_path):
    cfg = study(tmp_path, spread=0.02, uniform_share=0.25, top_k=1)
    p = proposal(cfg, {5: 1.0, 6: 0.1})
    draws = [proposals.draw(cfg.ensemble, m, p) for m in range(400)]
    base = [d for d in draws if d[1] == "base"]
    assert 60 < len(base) < 140  # ~100 of 400
    for m, d in enumerate(draws):
        if d[1] == "base":
            assert np.array_equal(d[0], cfg.ensemble.params(m))  # exactly the member's halton point
    near = np.stack([d[0] for d in draws if d[1] == "proposal"])
    span = np.ptp(np.asarray(cfg.ensemble.ranges), axis=1)
    dev = (near - np.asarray(p.centres[0])) / span
    assert np.abs(dev.mean(axis=0)).max() < 0.01 and 0.012 < dev.std(axis=0).mean() < 0.03


def test_member_draws_before_and_after_a_proposal_and_a_rerun_reuses_its_draw(tmp_path, capsys):
    cfg = study(tmp_path)
    first = proposals.draw_member(cfg, 0)
    # No proposal yet: the member's base point, as sampler halton would give it.
    assert first.source == "base" and first.version == 0 and first.note == "no proposal yet"
    assert np.allclose(first.params, StudyConfig.from_dict(validate_config(
        {**cfg.raw, "parameters": {**cfg.raw["parameters"], "sampler": "halton"}})).ensemble.params(0))
    proposals.publish(cfg, proposal(cfg, {0: 2.0, 1: 1.0}, version=1))
    drawn = [proposals.draw_member(cfg, m) for m in range(1, 12)]
    assert all(d.version == 1 for d in drawn) and any(d.source == "proposal" for d in drawn)
    assert proposals.read_draw(cfg, 3) == drawn[2]
    # A later proposal does not change a member drawn already: its rerun streams the same parameters.
    proposals.publish(cfg, proposal(cfg, {0: 0.1, 1: 5.0}, version=2))
    for d in drawn:
        again = proposals.draw_member(cfg, d.member)
        assert again.params == d.params and again.version == 1 and again.seed == d.seed
    assert "parameters of its earlier draw (proposal version 1" in capsys.readouterr().err
    # Even with the recorded parameters lost, the history makes the draw again.
    path = proposals.draw_path(cfg, drawn[0].member)
    rec = json.loads(path.read_text())
    path.write_text(json.dumps({**rec, "params": [0.0] * len(rec["params"])}))
    if drawn[0].source == "proposal":
        assert proposals.draw_member(cfg, drawn[0].member).params == drawn[0].params
    assert proposals.last_version(cfg) == 2
    proposals.clear(cfg, range(12))
    assert proposals.last_version(cfg) == 0 and proposals.read_draw(cfg, 3) is None


@pytest.mark.parametrize("content, why", [
    ("{not json", "is not JSON"),
    ('{"version": 1}', "not a proposal"),
    ("WRONG_RANGES", "was made for parameter ranges"),
])
def test_a_proposal_that_cannot_be_read_falls_back_to_the_base_sampler(tmp_path, capsys, content, why):
    cfg = study(tmp_path)
    path = proposals.proposal_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    if content == "WRONG_RANGES":
        obj = proposal(cfg, {0: 1.0}).to_json()
        obj["ranges"] = [[0.0, 1.0]] * len(obj["ranges"])
        content = json.dumps(obj)
    path.write_text(content)
    d = proposals.draw_member(cfg, 4)
    assert d.source == "fallback" and d.version == 0 and why in d.note and str(path) in d.note
    assert np.allclose(d.params, cfg.ensemble.params(4))
    err = capsys.readouterr().err
    assert "member 4: cannot use the proposal" in err and "drawing from the base sampler (halton)" in err


def test_steering_measures_each_member_and_centres_on_the_worst(tmp_path):
    cfg = study(tmp_path, top_k=1, probe_samples=1000, publish_every=5, statistic="all")
    problem = cfg.problem
    buffer = make_buffer("reservoir", capacity=60, watermark=1, x_dim=problem.n_inputs,
                         y_shape=problem.sample_shape, seed=0, device=torch.device("cpu"))
    params = {m: cfg.ensemble.params(m).astype(np.float32) for m in range(3)}
    for m in range(3):
        for step in range(1, 11):
            x = torch.tensor([*params[m], 0.01 * step], dtype=torch.float32)
            # Member 2's fields are far from what a zero network predicts: its loss is the highest.
            y = torch.full(problem.sample_shape, 400.0 if m == 2 else 100.0)
            buffer.put(x, y, member=m, step=step)
    net = build_network("fc", in_dim=problem.n_inputs, out_shape=problem.sample_shape, hidden=8, layers=1)
    for p in net.parameters():
        torch.nn.init.zeros_(p)  # predicts the lower bound of the field everywhere
    norm = problem.normalisation(times=np.array([0.0, 1.0]), fields=np.array([[100.0], [500.0]]).reshape(2, 1, 1, 1))
    model = Surrogate(network=net, x_low=norm.x_low, x_high=norm.x_high, y_low=norm.y_low, y_high=norm.y_high)
    ledger = Ledger(members=range(40), steps_expected=10)
    said = []
    steering = Steering(cfg=cfg, buffer=buffer, model=model, params=params, ledger=ledger, batch=0, say=said.append)
    losses = steering.member_losses()
    assert set(losses) == {0, 1, 2} and all(n == 10 for _, n in losses.values())
    assert losses[2][0] > losses[0][0] and losses[0][0] == pytest.approx(losses[1][0])
    assert not steering.maybe_publish(4) and steering.maybe_publish(5)
    latest = json.loads(proposals.proposal_path(cfg).read_text())
    assert latest["version"] == 1 and latest["members"] == [2]
    assert ledger[2].loss == pytest.approx(losses[2][0]) and ledger[2].loss_batch == 5
    assert np.isnan(ledger[7].loss)
    assert "proposal 1 at batch 5" in said[0]
    assert int(buffer.seen_counts().sum()) == 0  # probing is not training
    # statistic trained (the default): only the samples a batch has used; new ones are not judged.
    trained = Steering(cfg=study(tmp_path, probe_samples=1000), buffer=buffer, model=model, params=params,
                       ledger=ledger, batch=0, say=said.append)
    assert trained.member_losses() == {}
    drawn = buffer.sample(12)
    used = torch.unique(drawn.member).tolist()
    got = trained.member_losses()
    assert sorted(got) == sorted(used)
    seen = buffer.seen_counts() > 0
    assert sum(n for _, n in got.values()) == int(seen.sum())
    # The trainer copies each member's draw into the ledger.
    proposals.draw_member(cfg, 7)
    ledger.opened(7)
    note_draws(cfg, ledger)
    assert (ledger[7].draw, ledger[7].proposal_version) == (proposals.read_draw(cfg, 7).source, 1)


@pytest.mark.slow
def test_an_online_study_steers_its_later_members(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_merge(TINY, {
        "results_dir": str(tmp_path / "results"), "data_dir": str(tmp_path / "data"),
        "parameters": {"sampler": "adaptive", "adaptive": {"publish_every": 5, "top_k": 2, "uniform_share": 0.0}},
        "ensemble": {"n_members": 5},
        "solver": {"step_delay_s": 0.02},  # members stream for a while: the trainer publishes meanwhile
    })))
    cfg = StudyConfig.load(path)
    result = snakemake(tmp_path, path, "--cores", "2", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ledger = pd.read_csv(cfg.study_dir / "ledger.csv")
    assert (ledger["status"] == "complete").all() and ledger["steps_received"].sum() == 5 * 20
    history = [json.loads(line) for line in (cfg.study_dir / "proposals.jsonl").read_text().splitlines()]
    assert [h["version"] for h in history] == list(range(1, len(history) + 1))
    # Every member's ledger row says how it was drawn, and its stream carried exactly that draw.
    for row in ledger.itertuples():
        d = proposals.read_draw(cfg, row.member)
        assert d is not None and (row.draw, row.proposal_version, row.draw_seed) == (d.source, d.version, d.seed)
        marker = json.loads(cfg.member_marker(row.member).read_text())
        assert np.allclose(marker["params"], d.params)
        if d.source == "proposal":
            again, _, _ = proposals.draw(cfg.ensemble, row.member, proposals.archived(cfg, d.version))
            assert np.allclose(again, d.params)
    # The first member started before any proposal; later ones drew from one (uniform_share 0).
    assert (ledger["draw"] == "base").sum() >= 1 and (ledger["draw"] == "proposal").sum() >= 1
    # The trainer's statistic of the members it probed (a member whose samples were all replaced
    # in the small reservoir before a probe has none).
    probed = ledger[ledger["loss"].notna()]
    assert len(probed) >= 2 and (probed["loss"] >= 0).all() and (probed["loss_batch"] > 0).all()
    log = (cfg.study_dir / "logs" / "train_online" / "train_online.log").read_text()
    assert "proposal 1 at batch 5" in log
    # datamove status tells the same story.
    st = json.loads(datamove("status", cfg.study_dir, "--json").stdout)
    assert st["sampling"]["proposal"] == history[-1]["version"]
    assert st["sampling"]["draws"] == {s: int((ledger["draw"] == s).sum()) for s in proposals.DRAW_SOURCES}


def test_offline_members_carry_their_recorded_draw(tmp_path):
    """BP5 (no trainer, so no proposal): each member takes its base point and records it; the
    offline trainer's file check holds a file to its member's recorded draw."""
    from conftest import datamove as run_datamove
    from datamove.data import DatasetError, open_checked

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_merge(TINY, {
        "results_dir": str(tmp_path / "results"), "data_dir": str(tmp_path / "data"),
        "parameters": {"sampler": "adaptive"}, "stream": {"engine": "BP5"},
    })))
    cfg = StudyConfig.load(path)
    out = run_datamove("simulate", "--config", path, "--member", 1)
    assert "no proposal yet: its halton point" in out.stderr
    d = proposals.read_draw(cfg, 1)
    assert d.source == "base" and np.allclose(d.params, cfg.ensemble.params(1))
    open_checked(cfg, cfg.stream_dir, 1, sampling=cfg.ensemble, missing="?").close()
    # A file whose parameters are not its member's draw is refused, naming both.
    rec = json.loads(proposals.draw_path(cfg, 1).read_text())
    proposals.draw_path(cfg, 1).write_text(json.dumps({**rec, "params": [p + 1.0 for p in rec["params"]]}))
    with pytest.raises(DatasetError, match="was written with params"):
        open_checked(cfg, cfg.stream_dir, 1, sampling=cfg.ensemble, missing="?")

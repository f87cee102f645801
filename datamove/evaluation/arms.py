"""The arms of a study: one (online or offline, by stream.engine), or both in a comparison study.

A comparison study runs two arms from one config: each arm is the same study with ``arm`` set,
which moves its outputs to ``<results_dir>/<study>/<arm>/`` while the held-out and test members stay
shared. The online arm streams ``ensemble.n_members`` members (SST); the offline arm stores
``comparison.offline_members`` members (BP5), drawn with the same sampler and seed.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from datamove.config import StudyConfig, validate_config

ARMS = ("online", "offline")


def arm_name(cfg: StudyConfig) -> str:
    """The arm a study trains: its ``arm``, or what its engine makes it."""
    return cfg.arm or ("online" if cfg.stream.engine.upper() == "SST" else "offline")


def arm_config(raw: Mapping[str, Any], arm: str) -> dict[str, Any]:
    """The validated config of one arm of the comparison study ``raw``."""
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {ARMS}, got {arm!r}")
    cfg = copy.deepcopy(dict(raw))
    cfg["arm"] = arm
    cfg.setdefault("stream", {})
    cfg.setdefault("ensemble", {})
    cfg.setdefault("evaluation", {})
    if arm == "online":
        cfg["stream"]["engine"] = "SST"
    else:
        cfg["stream"]["engine"] = "BP5"
        cfg["stream"]["xml_config"] = None  # an XML file configures the SST arm
        cfg["ensemble"]["n_members"] = cfg.get("comparison", {}).get("offline_members", 4)
    cfg["evaluation"]["enabled"] = True
    return validate_config(cfg, source=f"{arm} arm of study '{cfg.get('study', 'default')}'")


def arm_dirs(cfg: StudyConfig) -> dict[str, Path]:
    """Where each arm of the study writes model.pt, metrics.csv, evaluation.csv, ..."""
    if cfg.comparison.enabled and cfg.arm is None:
        return {arm: cfg.study_dir / arm for arm in ARMS}
    return {arm_name(cfg): cfg.study_dir}

"""Task registry: a task is its `<data_dir>/<task>/meta.json` (name, track, labels).

Tasks not yet on disk can come from the Hugging Face hub; `HUB_TASKS` says how each hub
dataset maps onto the uniform schema (sentence1, sentence2, label).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mera.registry import Registry, did_you_mean

TASK_VERSION = 1  # bump when the meaning of a task's data changes: it enters every cache key


class TaskError(ValueError):
    """An unknown task or a task directory that does not follow the uniform layout."""


@dataclass(frozen=True)
class TaskSpec:
    name: str
    track: str
    label_names: tuple[str, ...]

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


@dataclass(frozen=True)
class HubSource:
    """How one hub dataset becomes a task in the uniform schema."""

    path: str
    config: str | None
    track: str
    label_names: tuple[str, ...]
    sentence1: str
    sentence2: str | None = None
    splits: tuple[tuple[str, str], ...] = (("train", "train"), ("validation", "validation"))
    label_threshold: float | None = None  # regression scores binarised at this value (STS-B)


_GLUE_PAIR = {"mrpc": ("sentence1", "sentence2"), "rte": ("sentence1", "sentence2"),
              "stsb": ("sentence1", "sentence2"), "qqp": ("question1", "question2"),
              "qnli": ("question", "sentence"), "mnli": ("premise", "hypothesis")}

HUB_TASKS: Registry[HubSource] = Registry("hub task", {
    "sst2": HubSource("nyu-mll/glue", "sst2", "sentiment", ("negative", "positive"), "sentence"),
    "cola": HubSource("nyu-mll/glue", "cola", "other", ("unacceptable", "acceptable"), "sentence"),
    "mrpc": HubSource("nyu-mll/glue", "mrpc", "paraphrase", ("not_equivalent", "equivalent"), *_GLUE_PAIR["mrpc"]),
    "qqp": HubSource("nyu-mll/glue", "qqp", "paraphrase", ("not_duplicate", "duplicate"), *_GLUE_PAIR["qqp"]),
    "stsb": HubSource("nyu-mll/glue", "stsb", "paraphrase", ("dissimilar", "similar"), *_GLUE_PAIR["stsb"],
                      label_threshold=3.0),
    "rte": HubSource("nyu-mll/glue", "rte", "nli", ("entailment", "not_entailment"), *_GLUE_PAIR["rte"]),
    "qnli": HubSource("nyu-mll/glue", "qnli", "nli", ("entailment", "not_entailment"), *_GLUE_PAIR["qnli"]),
    "mnli": HubSource("nyu-mll/glue", "mnli", "nli", ("entailment", "neutral", "contradiction"),
                      *_GLUE_PAIR["mnli"], splits=(("train", "train"), ("validation", "validation_matched"))),
    "snli": HubSource("stanfordnlp/snli", None, "nli", ("entailment", "neutral", "contradiction"),
                      "premise", "hypothesis"),
    "imdb": HubSource("stanfordnlp/imdb", None, "sentiment", ("negative", "positive"), "text",
                      splits=(("train", "train"), ("validation", "test"))),
    "mr": HubSource("cornell-movie-review-data/rotten_tomatoes", None, "sentiment", ("negative", "positive"),
                    "text"),
    "boolq": HubSource("google/boolq", None, "other", ("False", "True"), "question", "passage"),
}, TaskError)


def read_task(data_dir: Path, name: str) -> TaskSpec:
    """The task's spec from its meta.json (the registry entry)."""
    meta_path = Path(data_dir) / name / "meta.json"
    if not meta_path.is_file():
        raise TaskError(f"task {name!r} has no {meta_path}; {did_you_mean(name, available_tasks(data_dir))}")
    try:
        meta = json.loads(meta_path.read_text())
        labels = tuple(str(x) for x in meta["label_names"])
        track = str(meta["track"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise TaskError(f"{meta_path} must be JSON with 'task', 'track' and 'label_names' ({exc})") from None
    if str(meta.get("task", name)) != name:
        raise TaskError(f"{meta_path} names task {meta['task']!r} but lives in directory {name!r}; a task's "
                        "directory and meta.json 'task' must agree (two directories with one task name?)")
    if len(labels) < 2:
        raise TaskError(f"{meta_path}: label_names needs at least 2 labels, got {list(labels)}")
    return TaskSpec(name=name, track=track, label_names=labels)


def available_tasks(data_dir: Path) -> list[str]:
    d = Path(data_dir)
    return sorted(p.parent.name for p in d.glob("*/meta.json")) if d.is_dir() else []

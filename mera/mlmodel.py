"""Saved adapters as MLflow models: a pyfunc that puts an adapter (and its head) on the base
model its adapter_config.json names. With a head, predict() maps rows of sentence1 (and
sentence2) to label names; without one (a merged adapter) to [CLS] features.

    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    model.predict(pd.DataFrame({"sentence1": ["a gripping film"]}))
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
from mlflow.models import ModelSignature, set_model
from mlflow.types import ColSpec, Schema

MODEL_NAME = "model"  # the logged model's name in every unit run: runs:/<run id>/model
REQUIREMENTS = ["mera-bench", "torch", "transformers", "adapters", "pandas"]
# copying the adapter into the model draws a progress bar per unit; a user's own setting wins
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# an input example would make MLflow load the base model and predict once per unit: none is given
warnings.filterwarnings("ignore", message=".*An input example was not provided")  # (after a colour code)
SIGNATURE = ModelSignature(Schema([ColSpec("string", "sentence1"), ColSpec("string", "sentence2", required=False)]))


class AdapterModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from adapters import AutoAdapterModel

        from mera.heads import ADAPTER
        from mera.models import base_model_path, load_adapter, load_tokenizer

        adapter_dir = Path(context.artifacts["adapter"])
        name = json.loads((adapter_dir / "adapter_config.json").read_text())["model_name"]
        self.max_length = int(context.model_config.get("max_length", 128))
        self.model = AutoAdapterModel.from_pretrained(base_model_path(name))
        self.has_head = (adapter_dir / "head_config.json").is_file()
        load_adapter(self.model, adapter_dir, with_head=self.has_head)
        self.model.set_active_adapters(ADAPTER)
        self.model.eval()
        self.tokenizer = load_tokenizer(name)
        label2id = self.model.heads[ADAPTER].config.get("label2id") if self.has_head else None
        self.labels = sorted(label2id, key=label2id.get) if label2id else None

    def predict(self, context, model_input: pd.DataFrame, params=None):
        from mera.evaluate import features, predict
        from mera.tokens import encode

        df = model_input.reset_index(drop=True)
        if not self.has_head:
            return features(self.model.base_model, self.tokenizer, encode(self.tokenizer, df, self.max_length)).numpy()
        ids = predict(self.model, self.tokenizer, df, self.max_length).argmax(1)
        return [self.labels[i] for i in ids] if self.labels else ids.tolist()


def log(client, experiment_id: str, run_id: str, adapter_dir: Path, max_length: int, tags: dict) -> str:
    """Log `adapter_dir` as the run's MLflow model (listed in the UI's Models column); its id."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus

    logged = client.create_logged_model(experiment_id, name=MODEL_NAME, source_run_id=run_id,
                                        tags={k: str(v) for k, v in tags.items()}, model_type="adapter")
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.pyfunc.save_model(Path(tmp) / MODEL_NAME, python_model=__file__, signature=SIGNATURE,
                                 artifacts={"adapter": str(adapter_dir)}, model_config={"max_length": max_length},
                                 pip_requirements=REQUIREMENTS)  # the model from this file's code, no pickle
        client.log_model_artifacts(logged.model_id, str(Path(tmp) / MODEL_NAME))
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    return logged.model_id


set_model(AdapterModel())  # what MLflow loads from this file (models from code)

"""The model as an MLflow pyfunc ("models from code": a three-line script stored with the model imports this
class, nothing is pickled). `mlflow.pyfunc.load_model("models:/<name>@champion").predict([[item_id, ...], ...])`
returns the top-k item ids for each history, also outside the pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow.pyfunc import PythonModel

from pipeline.recsys.bundle import ModelBundle

BUNDLE_ARTIFACT = "bundle"


class BundlePyfunc(PythonModel):
    """pyfunc: predict([[item_id, ...], ...]) -> the top-k item ids for each history (oldest item first),
    items in the history excluded; k is `top_k` from the logged model_config."""

    def load_context(self, context: Any) -> None:
        self.bundle = ModelBundle.load(Path(context.artifacts[BUNDLE_ARTIFACT]))
        self.top_k = int((context.model_config or {}).get("top_k", 10))

    def predict(self, context: Any, model_input: list[list[str]], params: dict[str, Any] | None = None
                ) -> list[list[str]]:
        from pipeline.recsys.data import left_pad

        max_len = self.bundle.model.config.max_len
        encoded = [self.bundle.encode(list(items)) for items in model_input]
        known = [i for i, seq in enumerate(encoded) if len(seq)]
        out: list[list[str]] = [[] for _ in encoded]
        if not known:
            return out
        seqs = left_pad([encoded[i] for i in known], max_len)  # (B, L)
        k = min(self.top_k, self.bundle.model.config.n_items)
        ids, _ = self.bundle.model.recommend(seqs, k)  # seen items excluded (recsys.model.top_k_unseen)
        for row, i in enumerate(known):
            out[i] = [self.bundle.item_ids[j - 1] for j in ids[row].tolist()]
        return out

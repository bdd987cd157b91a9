"""The model side: the SASRec-family model, its data in index space, training, evaluation with baselines,
the saved bundle (with warm start) and batch scoring."""

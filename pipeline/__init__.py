"""The build pipeline: data -> features -> head -> evaluation -> index -> maps.

- ``pipeline.steps``: the steps and ``train_run`` (all of them, what ``python train.py`` runs);
- ``pipeline.options``: train.py's options, shared by the first start and the benches;
- ``pipeline.demo``: the offline default the app serves, built through the same steps;
- ``python -m pipeline``: build that default ahead of time (``make test`` does, before the suite).

Nothing is imported here, so ``pipeline.demo`` stays importable without torch.
"""

"""The offline tower's identity, importable without torch (``pipeline.demo`` checks a cached demo
run against it before the app's first page, when torch is not loaded yet).

The image features are the output of EfficientNet-Lite0's blocks[4] stage (112 channels at
stride 16: 14 x 14 at 224 px) average-pooled on a 4x4 grid: 1792-d. Before, the last feature map
(1280 channels at stride 32) was pooled on a 2x2 grid (5120-d, id "...-grid2x2+..."). Why: a
report's finding comes with a side and a zone ("small LEFT pleural effusion"), and the earlier
stage keeps it: a linear left-vs-right probe on validation reads AUROC 0.85 from these features
against 0.73 from the old ones (``python -m bench.side_probe``), and issue #23's rule chose them on
validation (best nDCG@10 among variants with phrase side-swap <= 0.10, 3 seeds). The id keys the
feature cache, checkpoints and indexes, so nothing pooled the old way is reused by mistake.
"""
OFFLINE_BACKBONE_ID = "offline:efficientnet_lite0-imagenet-stage4grid4x4+all-MiniLM-L6-v2"
OFFLINE_STAGE = 4  # the last block stage run for the features (timm ``blocks[4]``)
OFFLINE_GRID = 4  # its output average-pooled on this grid (rows x columns)

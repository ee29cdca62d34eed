"""Compression: the passes in order, the data-driven driver, and the pruning and precision plans.

``pipeline`` runs fold-BN, prune, low-rank and reconstruct in order on given ratios;
``driver`` fits them on calibration data and checks held-out samples; ``prune_plan`` picks
pruning ratios under an accuracy budget; ``precision`` picks int8 / fp16 / fp32 per layer and
quantizes with onnxruntime.
"""

"""``timm-sage train``: a small-image trainer that reads timm train.py's YAML configs.

``config`` parses and checks the keys, ``data`` builds in-memory datasets and batches, ``loop`` runs the
epochs (the SAGE step, docs/algorithm.md section 5), ``outputs`` writes metrics, checkpoints and figures,
``command`` is the CLI. The heavy imports (timm, torchvision) happen inside these modules, not here.
"""

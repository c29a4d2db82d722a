"""MSfusion, framework-free: split maps, planners, sub-models, aggregation and local training.

Nothing here imports Flower; ``server_app`` and ``client_app`` adapt these objects to Flower's
message API. The public API for Flower users is the ``msfusion`` package.
"""

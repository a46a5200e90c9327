"""The objectives of every stage, one module per family of losses (see engine/objective.py for the contract):
``sft`` (token-level cross-entropy), ``rm`` (Bradley-Terry + alpha * MSE to absolute scores)."""

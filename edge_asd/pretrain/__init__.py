"""PyTorch pretraining of the embedding encoder (the `train` extra).

Never imported by the runtime: only this subpackage uses torch.
"""

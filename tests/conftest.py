import torch

# Same threading as the CLI: one intra-op thread (fast and deterministic on small batches).
torch.set_num_threads(1)

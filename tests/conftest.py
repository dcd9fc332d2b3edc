import torch
from hypothesis import settings

settings.register_profile("shiftkit", max_examples=40, deadline=None)
settings.load_profile("shiftkit")
torch.set_num_threads(1)

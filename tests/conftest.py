import os

import torch
from hypothesis import settings

# CI runs the same examples every time (derandomize: a failure there is never luck); SHIFTKIT_HYPOTHESIS=explore
# draws new, more numerous examples, to look for counterexamples before they land.
settings.register_profile("shiftkit", max_examples=40, deadline=None, derandomize=True)
settings.register_profile("explore", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("SHIFTKIT_HYPOTHESIS", "shiftkit"))
torch.set_num_threads(1)

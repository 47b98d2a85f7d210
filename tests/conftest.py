"""Test-wide settings: the suite's models are tiny, so one thread is fastest and avoids
oversubscribing the 2-core CI machine."""

import torch

torch.set_num_threads(1)

"""The torch threads of forward and backward passes, set in the thread that runs them.

torch keeps the intra-op thread count per thread, and a thread created after *any* thread called
`torch.set_num_threads(n)` starts with n. The query embedder runs in a thread of its own with 1;
every thread created after it (the model server's engine, a trainer's worker) then computed on one
core, and the demo's forward passes ran at half speed on two. So the threads that do the heavy
work set their count themselves, from the setting or torch's own default.
"""

from __future__ import annotations

import torch

# torch's default (one per core), read at import: normally in the main thread, before any worker
# thread could have lowered the default of the threads created after it.
DEFAULT = torch.get_num_threads()


def use(threads: int = 0) -> int:
    """Compute with `threads` in this thread (0: torch's default); the count now in effect."""
    torch.set_num_threads(threads or DEFAULT)
    return torch.get_num_threads()

"""Settings shared by the Triton kernels."""

import os

# Under TRITON_INTERPRET=1 the kernels run on the CPU (tests): one small tile shape, no tuning.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()

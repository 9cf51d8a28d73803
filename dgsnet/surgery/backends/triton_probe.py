"""A kernel that loops to a runtime bound: the probe of whether Triton's interpreter works here
(dgsnet.surgery.backends._interpreter_problem). Imported only when triton is installed."""
import triton
import triton.language as tl


@triton.jit
def loop_to(x_ptr, n):
    acc = tl.load(x_ptr)
    for _ in range(0, n, 1):  # a runtime bound: what triton 3.6's interpreter fails on with numpy 2.4
        acc += 1.0
    tl.store(x_ptr, acc)

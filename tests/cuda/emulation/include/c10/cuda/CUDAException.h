// CUDA emulation (tests/cuda_emulation.py): c10's CUDA error checks, on the
// emulated runtime. A launch fails at once (cuda_emulation.h); the launch check
// marks it checked.
#pragma once
#include <c10/util/Exception.h>

#include "../../../cuda_emulation.h"

#define C10_CUDA_CHECK(expr)                                                        \
  do {                                                                              \
    const cudaError_t laaf_emu_error = (expr);                                      \
    TORCH_CHECK(laaf_emu_error == cudaSuccess, "CUDA error: ",                      \
                cudaGetErrorString(laaf_emu_error), " (", #expr, ")");              \
  } while (0)

#define C10_CUDA_KERNEL_LAUNCH_CHECK() ::laaf_emu::launch_checked()

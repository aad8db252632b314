// CUDA emulation (tests/cuda_emulation.py): one device, so the guard does nothing.
#pragma once
#include <c10/core/Device.h>

#include "CUDAStream.h"

namespace c10 {
namespace cuda {

struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};

}  // namespace cuda
}  // namespace c10

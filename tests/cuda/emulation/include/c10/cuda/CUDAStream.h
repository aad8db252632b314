// CUDA emulation (tests/cuda_emulation.py): one stream, which launches ignore.
#pragma once
#include <c10/core/Device.h>

#include "../../../cuda_emulation.h"

namespace c10 {
namespace cuda {

struct CUDAStream {
  operator cudaStream_t() const { return nullptr; }
};

inline CUDAStream getCurrentCUDAStream(c10::DeviceIndex = -1) { return {}; }

}  // namespace cuda
}  // namespace c10

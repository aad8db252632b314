// laaf_kernels tests: kernels with the bugs that the CUDA emulation must catch
// (tests/test_cuda_emulation.py), each beside its correct twin. Built only by the
// emulation (tests/cuda_emulation.py translates it as it does csrc/*.cu); the ops
// are torch.ops.laaf_emu_selftest.*, on CPU tensors.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

namespace {

constexpr int kThreads = 256;

// out[0] = sum of x[0:256], by thread 0 from a shared array `slots` that every
// thread fills; without the barrier thread 0 reads slots not yet written.
__device__ void block_sum_through(float* slots, const float* x, float* out, bool barrier) {
  slots[threadIdx.x] = x[threadIdx.x];
  if (barrier) __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0;
    for (int i = 0; i < kThreads; ++i) total += slots[i];
    out[0] = total;
  }
}

__global__ void block_sum_kernel(const float* x, float* out, bool barrier) {
  __shared__ float slots[kThreads];
  block_sum_through(slots, x, out, barrier);
}

__global__ void block_sum_dynamic_kernel(const float* x, float* out, bool barrier) {
  extern __shared__ __align__(16) unsigned char raw[];
  block_sum_through(reinterpret_cast<float*>(raw), x, out, barrier);
}

// out[lane] = x[lane] + x[lane ^ 1] in one warp; `lanes` lanes take part (32: all).
__global__ void pair_sum_kernel(const float* x, float* out, int lanes) {
  const int lane = threadIdx.x;
  if (lane >= lanes) return;
  out[lane] = x[lane] + __shfl_xor_sync(0xffffffffu, x[lane], 1);
}

__global__ void empty_kernel(int) {}

// out[0] = x[n]: one element past the end, which only AddressSanitizer sees
// (tests/run_cuda_asan.py checks that it does).
__global__ void read_past_end_kernel(const float* x, float* out, int64_t n) { out[0] = x[n]; }

at::Tensor block_sum(const at::Tensor& x, bool barrier, bool dynamic) {
  TORCH_CHECK(x.numel() == kThreads && x.scalar_type() == at::kFloat && x.is_contiguous());
  at::Tensor out = at::zeros({1}, x.options());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  if (dynamic) {
    block_sum_dynamic_kernel<<<1, kThreads, kThreads * sizeof(float), stream>>>(
        x.data_ptr<float>(), out.data_ptr<float>(), barrier);
  } else {
    block_sum_kernel<<<1, kThreads, 0, stream>>>(x.data_ptr<float>(), out.data_ptr<float>(),
                                                 barrier);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor pair_sum(const at::Tensor& x, int64_t lanes) {
  TORCH_CHECK(x.numel() == 32 && x.scalar_type() == at::kFloat && x.is_contiguous());
  at::Tensor out = at::zeros({32}, x.options());
  pair_sum_kernel<<<1, 32, 0, c10::cuda::getCurrentCUDAStream()>>>(
      x.data_ptr<float>(), out.data_ptr<float>(), static_cast<int>(lanes));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor read_past_end(const at::Tensor& x) {
  at::Tensor out = at::zeros({1}, x.options());
  read_past_end_kernel<<<1, 1, 0, c10::cuda::getCurrentCUDAStream()>>>(
      x.data_ptr<float>(), out.data_ptr<float>(), x.numel());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// A launch of an empty kernel with this configuration; `opt_in` bytes of dynamic
// shared memory allowed first, if > 0; `check` false leaves out the launch check.
void configured_launch(int64_t grid_x, int64_t grid_y, int64_t threads, int64_t smem,
                       int64_t opt_in, bool check) {
  if (opt_in > 0) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(empty_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(opt_in)));
  }
  const dim3 grid(static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y));
  empty_kernel<<<grid, static_cast<unsigned>(threads), static_cast<size_t>(smem),
                 c10::cuda::getCurrentCUDAStream()>>>(0);
  if (check) C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY(laaf_emu_selftest, m) {
  m.def("block_sum(Tensor x, bool barrier, bool dynamic) -> Tensor");
  m.def("pair_sum(Tensor x, int lanes) -> Tensor");
  m.def("read_past_end(Tensor x) -> Tensor");
  m.def("configured_launch(int grid_x, int grid_y, int threads, int smem, int opt_in, "
        "bool check) -> ()",
        &configured_launch);
}

TORCH_LIBRARY_IMPL(laaf_emu_selftest, CUDA, m) {
  m.impl("block_sum", &block_sum);
  m.impl("pair_sum", &pair_sum);
  m.impl("read_past_end", &read_past_end);
}

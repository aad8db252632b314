// Stand-in for the header that CMake generates in torch's CUDA builds (the CPU
// wheels leave it out); used only by tests/test_cuda_sources.py's compile checks.
#pragma once
#define C10_CUDA_BUILD_SHARED_LIBS

// CUDA emulation (tests/cuda_emulation.py): the runtime API is cuda_emulation.h's.
#pragma once
#include "../cuda_emulation.h"

// MA_DISPATCH_DTYPE(dtype, T, expr): run expr with T bound to the storage type of dtype.
#pragma once

#include "kernels/common/dtypes.h"

#define MA_DISPATCH_DTYPE(DTYPE, T, ...)                    \
  switch (DTYPE) {                                          \
    case ::megatron_align::kernels::DType::kFloat32: {      \
      using T = float;                                      \
      __VA_ARGS__;                                          \
      break;                                                \
    }                                                       \
    case ::megatron_align::kernels::DType::kBFloat16: {     \
      using T = ::megatron_align::kernels::bf16_t;          \
      __VA_ARGS__;                                          \
      break;                                                \
    }                                                       \
    case ::megatron_align::kernels::DType::kFloat16: {      \
      using T = ::megatron_align::kernels::fp16_t;          \
      __VA_ARGS__;                                          \
      break;                                                \
    }                                                       \
  }

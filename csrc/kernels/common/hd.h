// Host/device portability helpers shared by the CPU (.cpp) and CUDA (.cu) kernels.
// No torch, no CUDA runtime headers: compiles with a plain C++17 compiler and with nvcc.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#define MA_HD __host__ __device__ __forceinline__
#else
#define MA_HD inline
#endif

namespace megatron_align {
namespace kernels {

MA_HD uint32_t float_bits(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

MA_HD float bits_float(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

MA_HD float neg_inf() { return bits_float(0xff800000u); }

MA_HD float fast_exp(float x) {
#ifdef __CUDA_ARCH__
  return __expf(x);
#else
  return std::exp(x);
#endif
}

MA_HD float fast_log(float x) {
#ifdef __CUDA_ARCH__
  return __logf(x);
#else
  return std::log(x);
#endif
}

}  // namespace kernels
}  // namespace megatron_align

// 16-bit floating-point storage types with host/device conversions to and from fp32.
//
// bf16_t and fp16_t are bit-compatible with at::BFloat16 / at::Half and with CUDA's
// __nv_bfloat16 / __half, so callers reinterpret raw data pointers. Conversions round to
// nearest even, as torch does, so kernels that write bf16/fp16 gradients match torch's casts.
#pragma once

#include "kernels/common/hd.h"

namespace megatron_align {
namespace kernels {

struct alignas(2) bf16_t {
  uint16_t bits;
};
struct alignas(2) fp16_t {
  uint16_t bits;
};

MA_HD float to_float(float x) { return x; }

MA_HD float to_float(bf16_t x) { return bits_float(static_cast<uint32_t>(x.bits) << 16); }

MA_HD float to_float(fp16_t h) {
  // F. Giesen's half_to_float (exact for every half, including subnormals, inf and nan).
  uint32_t o = static_cast<uint32_t>(h.bits & 0x7fffu) << 13;
  const uint32_t shifted_exp = 0x7c00u << 13;
  const uint32_t exp = shifted_exp & o;
  o += (127u - 15u) << 23;
  if (exp == shifted_exp) {
    o += (128u - 16u) << 23;  // inf / nan
  } else if (exp == 0) {
    o += 1u << 23;  // zero / subnormal: renormalise
    o = float_bits(bits_float(o) - bits_float(113u << 23));
  }
  o |= static_cast<uint32_t>(h.bits & 0x8000u) << 16;
  return bits_float(o);
}

template <typename T>
MA_HD T from_float(float f);

template <>
MA_HD float from_float<float>(float f) {
  return f;
}

template <>
MA_HD bf16_t from_float<bf16_t>(float f) {
  uint32_t u = float_bits(f);
  bf16_t out;
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    out.bits = 0x7fc0u;  // quiet nan
    return out;
  }
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  out.bits = static_cast<uint16_t>(u >> 16);
  return out;
}

template <>
MA_HD fp16_t from_float<fp16_t>(float f) {
  // F. Giesen's float_to_half_fast3_rtne.
  uint32_t u = float_bits(f);
  const uint32_t sign = u & 0x80000000u;
  u ^= sign;
  uint16_t o;
  if (u >= ((127u + 16u) << 23)) {
    o = (u > 0x7f800000u) ? 0x7e00u : 0x7c00u;
  } else if (u < (113u << 23)) {
    const uint32_t denorm_magic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
    const float sum = bits_float(u) + bits_float(denorm_magic);
    o = static_cast<uint16_t>(float_bits(sum) - denorm_magic);
  } else {
    const uint32_t mant_odd = (u >> 13) & 1u;
    u += ((15u - 127u) << 23) + 0xfffu;
    u += mant_odd;
    o = static_cast<uint16_t>(u >> 13);
  }
  fp16_t out;
  out.bits = static_cast<uint16_t>(o | (sign >> 16));
  return out;
}

/// Element type tag passed across the framework-free C++ API.
enum class DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

}  // namespace kernels
}  // namespace megatron_align

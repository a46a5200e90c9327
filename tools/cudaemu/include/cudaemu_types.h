// The CUDA runtime types the kernels' host API names (see cudaemu.h), without any device machinery:
// included by the stub cuda_runtime*.h so a plain C++ unit (the torch glue) can declare *_cuda functions.
#pragma once

typedef struct CUstream_st* cudaStream_t;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorInvalidConfiguration = 9 };
typedef cudaError_t cudaError;
inline const char* cudaemu_error_string(cudaError_t e) {
  return e == cudaSuccess ? "no error" : e == cudaErrorInvalidConfiguration ? "invalid configuration argument"
                                                                              : "invalid argument";
}

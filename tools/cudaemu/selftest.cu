// Negative controls of the emulator (tests/ops/test_cuda_emulation.py runs each case): it must compute a
// correct warp/block reduction, and must catch a divergent barrier, a shuffle naming an exited lane, a bad
// launch configuration and (under ASan) an out-of-bounds read. usage: selftest CASE
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

__global__ void block_sum(const float* x, int n, float* out) {
  __shared__ float smem[32];
  float v = 0.f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) v += x[blockIdx.x * n + i];
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  if ((threadIdx.x & 31) == 0) smem[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    v = threadIdx.x < blockDim.x / 32 ? smem[threadIdx.x] : 0.f;
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    if (threadIdx.x == 0) out[blockIdx.x] = v;
  }
}

__global__ void divergent_barrier(int* out) {
  if (threadIdx.x < 32) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

__global__ void shuffle_with_exited_lane(float* out) {
  if (threadIdx.x == 3) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.f, 1);
}

__global__ void read_past_end(const float* x, int n, float* out) {
  float v = 0.f;
  for (int i = threadIdx.x; i <= n; i += blockDim.x) v += x[i];  // <= : one element too far
  out[threadIdx.x] = v;
}

int main(int argc, char** argv) {
  const char* c = argc > 1 ? argv[1] : "";
  if (!std::strcmp(c, "reduce")) {
    const int blocks = 3, n = 1000;
    std::vector<float> x(blocks * n), out(blocks);
    double want[blocks] = {0, 0, 0};
    for (int i = 0; i < blocks * n; ++i) {
      x[i] = static_cast<float>((i * 7919) % 97) / 8.f;
      want[i / n] += x[i];
    }
    MA_LAUNCH(blocks, 256, 0, nullptr, block_sum)(x.data(), n, out.data());
    for (int b = 0; b < blocks; ++b)
      if (out[b] != static_cast<float>(want[b])) { std::printf("block %d: %g != %g\n", b, out[b], want[b]); return 1; }
    std::printf("reduce ok\n");
    return 0;
  }
  if (!std::strcmp(c, "bad_config")) {
    MA_LAUNCH(1, 2048, 0, nullptr, divergent_barrier)(nullptr);
    const cudaError_t e = cudaGetLastError();
    std::printf("%s\n", cudaGetErrorString(e));
    return e == cudaErrorInvalidConfiguration ? 0 : 1;
  }
  std::vector<int> iout(64);
  std::vector<float> fout(64);
  if (!std::strcmp(c, "divergent")) MA_LAUNCH(1, 64, 0, nullptr, divergent_barrier)(iout.data());
  if (!std::strcmp(c, "exited_lane")) MA_LAUNCH(1, 32, 0, nullptr, shuffle_with_exited_lane)(fout.data());
  if (!std::strcmp(c, "oob")) {
    float* x = static_cast<float*>(std::malloc(100 * sizeof(float)));
    for (int i = 0; i < 100; ++i) x[i] = 1.f;
    MA_LAUNCH(1, 32, 0, nullptr, read_past_end)(x, 100, fout.data());
    std::free(x);
  }
  std::printf("no error detected in case '%s'\n", c);
  return 3;
}

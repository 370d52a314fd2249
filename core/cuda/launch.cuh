// Kernel launch helpers shared by the CUDA kernels: element and row loops that take the per-element
// work as a __device__ lambda, block-wide sums, and deterministic reductions (over columns, and over
// all elements down to one value copied to the host). Everything runs on the legacy default stream
// (stream 0) for now: each op is ordered after the previous one, and a copy to the host waits for
// them all. A training stream comes with the trainer's device support.
#pragma once

#include <algorithm>
#include <cstdint>

#include "core/cuda/cuda_check.h"

namespace moe::cuda {

constexpr int kThreads = 256;           // threads per block of every kernel here (a multiple of 32)
constexpr int kMaxBlocks = 4096;        // grid of the element loops (grid-stride beyond)
constexpr int kMaxRowBlocks = 65535;    // grid of the row loops (block-stride beyond)
constexpr int kMaxReduceBlocks = 1024;  // partial sums of reduce_to_host

// Device buffers of the current device, kept between calls (core/cuda/memory.cu). scratch_buffer's
// contents are valid until its next call: an op uses it for one purpose at a time. reduction_buffer
// holds reduce_to_host's partials, kMaxReduceBlocks + 1 values of up to 16 bytes.
void* scratch_buffer(const char* op, int64_t bytes);
void* reduction_buffer(const char* op);

inline int blocks_for(int64_t n) {
  return static_cast<int>(std::clamp<int64_t>((n + kThreads - 1) / kThreads, 1, kMaxBlocks));
}

template <class F>
__global__ void for_each_kernel(int64_t n, F f) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) f(i);
}

// Runs f(i) on the device for every i in [0, n).
template <class F>
void for_each(const char* op, int64_t n, F f) {
  if (n <= 0) return;
  for_each_kernel<<<blocks_for(n), kThreads>>>(n, f);
  MOE_CUDA_CHECK_LAUNCH(op);
}

template <class F>
__global__ void for_each_row_kernel(int64_t rows, F f) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) f(r);
}

// Runs f(r) for every row r in [0, rows) with one block of kThreads per row: every thread of the block
// calls f(r) and takes the columns c = threadIdx.x, c + kThreads, ...; f may call block_sum and block_max.
template <class F>
void for_each_row(const char* op, int64_t rows, F f) {
  if (rows <= 0) return;
  for_each_row_kernel<<<static_cast<int>(std::min<int64_t>(rows, kMaxRowBlocks)), kThreads>>>(rows, f);
  MOE_CUDA_CHECK_LAUNCH(op);
}

struct Add {
  template <class T>
  __device__ T operator()(T a, T b) const { return a + b; }
};
struct Max {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct Min {
  __device__ long long operator()(long long a, long long b) const { return a < b ? a : b; }
};
__device__ inline double2 operator+(double2 a, double2 b) { return make_double2(a.x + b.x, a.y + b.y); }

// Every thread of the block gets combine() of v over the block's threads, the same bits everywhere
// (a fixed tree: warp butterflies, then the warps' results in order). Called by all threads alike.
template <class T, class Combine>
__device__ T block_reduce(T v, Combine combine) {
  __shared__ T per_warp[kThreads / 32];
  for (int offset = 16; offset > 0; offset >>= 1) v = combine(v, __shfl_xor_sync(0xffffffffu, v, offset));
  __syncthreads();  // the previous call's readers are done with per_warp
  if ((threadIdx.x & 31) == 0) per_warp[threadIdx.x >> 5] = v;
  __syncthreads();
  T total = per_warp[0];
  for (int w = 1; w < int(blockDim.x >> 5); ++w) total = combine(total, per_warp[w]);
  return total;
}
template <class T>
__device__ T block_sum(T v) { return block_reduce(v, Add{}); }
__device__ inline float block_max(float v) { return block_reduce(v, Max{}); }

// Column sums of a (rows, cols) table: store(c, sum over r of term(r, c)) for every column c; the
// sum in T, in a fixed order (deterministic). Blocks of 32 columns x 8 row phases.
template <class T, class Term, class Store>
__global__ void column_reduce_kernel(int64_t rows, int64_t cols, Term term, Store store) {
  __shared__ T part[8][32];
  const int64_t c = blockIdx.x * int64_t{32} + threadIdx.x;
  T s = 0;
  if (c < cols)
    for (int64_t r = threadIdx.y; r < rows; r += 8) s += term(r, c);
  part[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y != 0 || c >= cols) return;
  T total = part[0][threadIdx.x];
  for (int y = 1; y < 8; ++y) total += part[y][threadIdx.x];
  store(c, total);
}

template <class T, class Term, class Store>
void column_reduce(const char* op, int64_t rows, int64_t cols, Term term, Store store) {
  if (cols <= 0) return;
  column_reduce_kernel<T><<<static_cast<unsigned>((cols + 31) / 32), dim3(32, 8)>>>(rows, cols, term, store);
  MOE_CUDA_CHECK_LAUNCH(op);
}

// combine() of term(i) over i in [0, n) on the device, then one copy of the result to the host
// (which waits for the device). The grid depends on n only, so the result has the same bits on
// every call. identity for n = 0. T of at most 16 bytes (double, double2, long long).
template <class T, class Term, class Combine>
__global__ void reduce_kernel(int64_t n, T identity, Term term, Combine combine, T* partials) {
  __shared__ T part[kThreads];
  T acc = identity;
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < n; i += int64_t{gridDim.x} * kThreads)
    acc = combine(acc, term(i));
  part[threadIdx.x] = acc;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) part[threadIdx.x] = combine(part[threadIdx.x], part[threadIdx.x + s]);
    __syncthreads();
  }
  if (threadIdx.x == 0) partials[blockIdx.x] = part[0];
}


template <class T, class Term, class Combine>
T reduce_to_host(const char* op, int64_t n, T identity, Term term, Combine combine) {
  static_assert(sizeof(T) <= 16, "reduction_buffer holds values of up to 16 bytes");
  if (n <= 0) return identity;
  T* partials = static_cast<T*>(reduction_buffer(op));
  const int blocks = static_cast<int>(std::clamp<int64_t>((n + kThreads - 1) / kThreads, 1, kMaxReduceBlocks));
  reduce_kernel<<<blocks, kThreads>>>(n, identity, term, combine, partials);
  MOE_CUDA_CHECK_LAUNCH(op);
  // Second pass, one block: the partials in a fixed order into partials[kMaxReduceBlocks].
  const T* in = partials;
  reduce_kernel<<<1, kThreads>>>(int64_t{blocks}, identity, [in] __device__(int64_t i) { return in[i]; }, combine,
                                 partials + kMaxReduceBlocks);
  MOE_CUDA_CHECK_LAUNCH(op);
  T result;
  MOE_CUDA_CHECK(op, cudaMemcpy(&result, partials + kMaxReduceBlocks, sizeof(T), cudaMemcpyDeviceToHost));
  return result;
}

}  // namespace moe::cuda

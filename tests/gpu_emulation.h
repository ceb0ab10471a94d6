// Lets runtime/gpu/kernels.cu compile as plain C++ for the tests (g++ -include this file):
// one block of one thread, so grid-stride loops visit every element in order and
// __syncthreads() has nothing to wait for. Atomics become plain read-modify-writes.
#pragma once
#include <cmath>
#include <algorithm>

struct EmuDim3 { unsigned x, y, z; };
extern "C" {
EmuDim3 blockIdx = {0, 0, 0}, threadIdx = {0, 0, 0}, blockDim = {1, 1, 1}, gridDim = {1, 1, 1};
}
#define __global__
#define __device__
#define __shared__ static
#define __restrict__
#define __syncthreads() ((void)0)
using std::floor;

template <class T> inline T atomicAdd(T* p, T v) { T old = *p; *p = old + v; return old; }
template <class T> inline T atomicMin(T* p, T v) { T old = *p; *p = std::min(old, v); return old; }
template <class T> inline T atomicMax(T* p, T v) { T old = *p; *p = std::max(old, v); return old; }

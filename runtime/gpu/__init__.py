"""The GPU path: CUDA kernels (NVRTC), TensorRT engines, and the stages that use them."""

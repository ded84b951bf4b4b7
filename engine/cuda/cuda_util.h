// CUDA / cuBLAS helpers for the CUDA backend: error codes turned into absl::Status, and
// move-only RAII owners of device memory, pinned host memory, streams, events, graphs and
// cuBLAS handles (docs/engine-cuda.md).
//
// Each owner frees its resource in its destructor on whichever device is current then; the
// owner of several resources (CudaEngine) selects its device before they are destroyed.
// None of these types is safe for concurrent use; each is owned by one thread at a time.
#ifndef KVTIER_ENGINE_CUDA_CUDA_UTIL_H_
#define KVTIER_ENGINE_CUDA_CUDA_UTIL_H_

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace kvtier::engine {

// A failed CUDA runtime call as a Status: ResourceExhausted for allocation failures, Internal
// otherwise, naming the call and the place.
inline absl::Status CudaErrorToStatus(cudaError_t err, const char* expr, const char* file,
                                      int line) {
  std::string msg = absl::StrCat("CUDA error ", cudaGetErrorName(err), " (",
                                 cudaGetErrorString(err), ") in ", expr, " at ", file, ":", line);
  if (err == cudaErrorMemoryAllocation) return absl::ResourceExhaustedError(msg);
  return absl::InternalError(msg);
}

inline absl::Status CublasErrorToStatus(cublasStatus_t err, const char* expr, const char* file,
                                        int line) {
  std::string msg =
      absl::StrCat("cuBLAS error ", cublasGetStatusName(err), " (", cublasGetStatusString(err),
                   ") in ", expr, " at ", file, ":", line);
  if (err == CUBLAS_STATUS_ALLOC_FAILED) return absl::ResourceExhaustedError(msg);
  return absl::InternalError(msg);
}

}  // namespace kvtier::engine

// Returns a Status from the enclosing function when the CUDA call fails.
#define KVTIER_CUDA_RETURN_IF_ERROR(expr)                                                      \
  do {                                                                                         \
    const cudaError_t kvtier_cuda_err_ = (expr);                                               \
    if (kvtier_cuda_err_ != cudaSuccess) {                                                     \
      return ::kvtier::engine::CudaErrorToStatus(kvtier_cuda_err_, #expr, __FILE__, __LINE__); \
    }                                                                                          \
  } while (0)

// Returns a Status from the enclosing function when the cuBLAS call fails.
#define KVTIER_CUBLAS_RETURN_IF_ERROR(expr)                                                        \
  do {                                                                                             \
    const cublasStatus_t kvtier_cublas_err_ = (expr);                                              \
    if (kvtier_cublas_err_ != CUBLAS_STATUS_SUCCESS) {                                             \
      return ::kvtier::engine::CublasErrorToStatus(kvtier_cublas_err_, #expr, __FILE__, __LINE__); \
    }                                                                                              \
  } while (0)

namespace kvtier::engine {

// Memory owned through a pair of CUDA allocation calls. Move-only.
template <typename Alloc>
class CudaMemory {
 public:
  CudaMemory() = default;
  static absl::StatusOr<CudaMemory> Allocate(size_t bytes) {
    CudaMemory b;
    if (bytes == 0) return b;
    KVTIER_CUDA_RETURN_IF_ERROR(Alloc::Allocate(&b.ptr_, bytes));
    b.bytes_ = bytes;
    return b;
  }
  ~CudaMemory() { Reset(); }
  CudaMemory(CudaMemory&& o) noexcept
      : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  CudaMemory& operator=(CudaMemory&& o) noexcept {
    if (this != &o) {
      Reset();
      ptr_ = std::exchange(o.ptr_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }
  CudaMemory(const CudaMemory&) = delete;
  CudaMemory& operator=(const CudaMemory&) = delete;

  void Reset() {
    if (ptr_ != nullptr) Alloc::Free(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
  }
  void* get() const { return ptr_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

struct DeviceAlloc {
  static cudaError_t Allocate(void** p, size_t bytes) { return cudaMalloc(p, bytes); }
  static void Free(void* p) { cudaFree(p); }
};
struct PinnedAlloc {
  static cudaError_t Allocate(void** p, size_t bytes) {
    return cudaHostAlloc(p, bytes, cudaHostAllocDefault);
  }
  static void Free(void* p) { cudaFreeHost(p); }
};

// Device memory from cudaMalloc (256-byte aligned).
using DeviceBuffer = CudaMemory<DeviceAlloc>;
// Page-locked host memory from cudaHostAlloc.
using PinnedBuffer = CudaMemory<PinnedAlloc>;

// A non-blocking stream (no implicit synchronization with the legacy default stream).
class CudaStream {
 public:
  CudaStream() = default;
  static absl::StatusOr<CudaStream> Create() {
    CudaStream s;
    KVTIER_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&s.stream_, cudaStreamNonBlocking));
    return s;
  }
  ~CudaStream() {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }
  CudaStream(CudaStream&& o) noexcept : stream_(std::exchange(o.stream_, nullptr)) {}
  CudaStream& operator=(CudaStream&& o) noexcept {
    std::swap(stream_, o.stream_);
    return *this;
  }
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

// An event without timing (cheapest to record and wait on).
class CudaEvent {
 public:
  CudaEvent() = default;
  static absl::StatusOr<CudaEvent> Create(unsigned flags = cudaEventDisableTiming) {
    CudaEvent e;
    KVTIER_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&e.event_, flags));
    return e;
  }
  ~CudaEvent() {
    if (event_ != nullptr) cudaEventDestroy(event_);
  }
  CudaEvent(CudaEvent&& o) noexcept : event_(std::exchange(o.event_, nullptr)) {}
  CudaEvent& operator=(CudaEvent&& o) noexcept {
    std::swap(event_, o.event_);
    return *this;
  }
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;
  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
};

// An instantiated CUDA graph.
class CudaGraphExec {
 public:
  CudaGraphExec() = default;
  explicit CudaGraphExec(cudaGraphExec_t exec) : exec_(exec) {}
  ~CudaGraphExec() {
    if (exec_ != nullptr) cudaGraphExecDestroy(exec_);
  }
  CudaGraphExec(CudaGraphExec&& o) noexcept : exec_(std::exchange(o.exec_, nullptr)) {}
  CudaGraphExec& operator=(CudaGraphExec&& o) noexcept {
    std::swap(exec_, o.exec_);
    return *this;
  }
  CudaGraphExec(const CudaGraphExec&) = delete;
  CudaGraphExec& operator=(const CudaGraphExec&) = delete;
  cudaGraphExec_t get() const { return exec_; }
  explicit operator bool() const { return exec_ != nullptr; }

 private:
  cudaGraphExec_t exec_ = nullptr;
};

// A captured (not instantiated) CUDA graph.
class CudaGraph {
 public:
  CudaGraph() = default;
  explicit CudaGraph(cudaGraph_t graph) : graph_(graph) {}
  ~CudaGraph() {
    if (graph_ != nullptr) cudaGraphDestroy(graph_);
  }
  CudaGraph(CudaGraph&& o) noexcept : graph_(std::exchange(o.graph_, nullptr)) {}
  CudaGraph& operator=(CudaGraph&& o) noexcept {
    std::swap(graph_, o.graph_);
    return *this;
  }
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;
  cudaGraph_t get() const { return graph_; }

 private:
  cudaGraph_t graph_ = nullptr;
};

// A cuBLAS handle.
class CublasHandle {
 public:
  CublasHandle() = default;
  static absl::StatusOr<CublasHandle> Create() {
    CublasHandle h;
    KVTIER_CUBLAS_RETURN_IF_ERROR(cublasCreate(&h.handle_));
    return h;
  }
  ~CublasHandle() {
    if (handle_ != nullptr) cublasDestroy(handle_);
  }
  CublasHandle(CublasHandle&& o) noexcept : handle_(std::exchange(o.handle_, nullptr)) {}
  CublasHandle& operator=(CublasHandle&& o) noexcept {
    std::swap(handle_, o.handle_);
    return *this;
  }
  CublasHandle(const CublasHandle&) = delete;
  CublasHandle& operator=(const CublasHandle&) = delete;
  cublasHandle_t get() const { return handle_; }

 private:
  cublasHandle_t handle_ = nullptr;
};

}  // namespace kvtier::engine

#endif  // KVTIER_ENGINE_CUDA_CUDA_UTIL_H_

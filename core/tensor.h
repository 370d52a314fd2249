// Tensor: a dense, row-major, contiguous n-dimensional array of float32, bfloat16 or int32 on one
// device. Its memory is the device backend's (allocation, copies, zero and fill go through
// core/backend_ops.inc); the typed accessors give host pointers and check both dtype and device.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

namespace moe {

enum class Device { CPU, CUDA };
enum class DType { F32, BF16, I32 };

int64_t dtype_size(DType dtype);  // bytes per element: 4, 2, 4

// Whether this build and machine have a device of that kind for tensors (the CPU always).
bool device_available(Device device);

using Shape = std::vector<int64_t>;

std::string to_string(const Shape& shape);  // "(4, 512)"
const char* to_string(Device device);
const char* to_string(DType dtype);

// Storage is reference-counted: copies and views share it, so a view stays valid while any tensor
// holding the storage lives. Not thread-safe for concurrent writes to the same elements.
class Tensor {
 public:
  Tensor() = default;

  // Allocates numel(shape) elements on `device`, zero-filled (zeros) or left uninitialised (empty).
  // A device this build has no backend for throws InvalidArgument ("... has no CUDA implementation
  // in this build"), as does one the machine lacks ("allocate_bytes: no CUDA device (...)").
  static Tensor zeros(const Shape& shape, DType dtype = DType::F32, Device device = Device::CPU);
  static Tensor empty(const Shape& shape, DType dtype = DType::F32, Device device = Device::CPU);
  // Copies `values` into a new CPU tensor of the given shape; numel must match.
  static Tensor from(const Shape& shape, const std::vector<float>& values);
  static Tensor from_ints(const Shape& shape, const std::vector<int32_t>& values);

  const Shape& shape() const { return shape_; }
  int rank() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int i) const;  // negative i counts from the end
  int64_t numel() const { return numel_; }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  bool defined() const { return storage_ != nullptr; }
  int64_t nbytes() const { return numel_ * dtype_size(dtype_); }

  // Host pointers to the elements: assert a CPU tensor of that dtype (bf16 as its raw 16 bits).
  float* f32();
  const float* f32() const;
  uint16_t* bf16();
  const uint16_t* bf16() const;
  int32_t* i32();
  const int32_t* i32() const;
  // The elements' address on the tensor's device, any dtype: for backends.
  void* data() { return data_; }
  const void* data() const { return data_; }

  // View of rows [begin, end) along dimension 0; shares storage.
  Tensor rows(int64_t begin, int64_t end) const;
  // View with a new shape of the same numel; shares storage.
  Tensor reshape(const Shape& shape) const;
  // Deep copy, on the same device.
  Tensor clone() const;
  // Copies src's elements into this tensor's (which may be a view), across devices too: same shape
  // and dtype, else InvalidArgument; the two must not overlap. A copy to or from a GPU waits for the
  // GPU's earlier work.
  void copy_from(const Tensor& src);
  // This tensor on `device`: itself (sharing storage) when it is there already, else a copy.
  Tensor to(Device device) const;

  // Makes this tensor hold `shape` (same dtype and device), reusing its memory when large enough, so
  // per-call buffers are allocated once and then stay resident: a tensor's own allocation, or for a
  // view (rows) only the view's own rows, never memory beyond them; a larger shape gets new storage.
  // Contents are unspecified afterwards. Other tensors sharing the reused memory see the same bytes
  // being overwritten by later use: only resize buffers nobody else reads.
  void resize(const Shape& shape);

  void zero();
  void fill(float value);  // float32 only

 private:
  std::shared_ptr<void> storage_;
  void* data_ = nullptr;
  Shape shape_;
  int64_t numel_ = 0;
  int64_t storage_numel_ = 0;  // elements from data_ on that resize() may reuse
  DType dtype_ = DType::F32;
  Device device_ = Device::CPU;
};

int64_t numel_of(const Shape& shape);

// Makes `buffer` hold `shape` as Tensor::resize does, on `device` with `dtype`: an undefined buffer, or
// one of another device or dtype, gets new storage. For a layer's kept scratch tensors, which live on
// the device of the layer's input.
void resize_on(Tensor& buffer, const Shape& shape, Device device, DType dtype = DType::F32);
// resize_on, then zero: for kept gradient buffers that a backward accumulates into.
void resize_zeroed(Tensor& buffer, const Shape& shape, Device device, DType dtype = DType::F32);

// Shape checks for op front-ends: throw InvalidArgument naming the op, the argument and the shapes.
void require_shape(const char* op, const char* arg, const Tensor& t, const Shape& expected);
void require_rank(const char* op, const char* arg, const Tensor& t, int rank);
void require_dtype(const char* op, const char* arg, const Tensor& t, DType dtype);
void require_same_device(const char* op, std::initializer_list<const Tensor*> tensors);

}  // namespace moe

// Tensor: a dense, row-major, contiguous n-dimensional array of float32 or int32 on one device.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

namespace moe {

enum class Device { CPU, CUDA };
enum class DType { F32, I32 };

using Shape = std::vector<int64_t>;

std::string to_string(const Shape& shape);  // "(4, 512)"
const char* to_string(Device device);
const char* to_string(DType dtype);

// Storage is reference-counted: copies and views share it, so a view stays valid while any tensor
// holding the storage lives. Not thread-safe for concurrent writes to the same elements.
class Tensor {
 public:
  Tensor() = default;

  // Allocates numel(shape) elements, zero-filled (zeros) or left uninitialised (empty).
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

  float* f32();
  const float* f32() const;
  int32_t* i32();
  const int32_t* i32() const;

  // View of rows [begin, end) along dimension 0; shares storage.
  Tensor rows(int64_t begin, int64_t end) const;
  // View with a new shape of the same numel; shares storage.
  Tensor reshape(const Shape& shape) const;
  // Deep copy.
  Tensor clone() const;

  // Makes this tensor hold `shape` (same dtype and device), reusing its storage when the storage is
  // its own (not a view) and large enough, so per-call buffers are allocated once and then stay
  // resident. Contents are unspecified afterwards. Other tensors sharing the old storage see the
  // same bytes being overwritten by later use: only resize buffers nobody else reads.
  void resize(const Shape& shape);

  void zero();
  void fill(float value);

 private:
  std::shared_ptr<void> storage_;
  void* data_ = nullptr;
  Shape shape_;
  int64_t numel_ = 0;
  int64_t storage_numel_ = 0;  // elements the storage holds, for resize()
  DType dtype_ = DType::F32;
  Device device_ = Device::CPU;
};

int64_t numel_of(const Shape& shape);

// Shape checks for op front-ends: throw InvalidArgument naming the op, the argument and the shapes.
void require_shape(const char* op, const char* arg, const Tensor& t, const Shape& expected);
void require_rank(const char* op, const char* arg, const Tensor& t, int rank);
void require_dtype(const char* op, const char* arg, const Tensor& t, DType dtype);
void require_same_device(const char* op, std::initializer_list<const Tensor*> tensors);

}  // namespace moe

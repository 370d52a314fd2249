// Tensor storage, views and shape checks.
#include "core/tensor.h"

#include <cstdlib>
#include <cstring>
#include <sstream>

#include "core/check.h"

namespace moe {

std::string to_string(const Shape& shape) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << ")";
  return os.str();
}

const char* to_string(Device device) { return device == Device::CPU ? "cpu" : "cuda"; }
const char* to_string(DType dtype) { return dtype == DType::F32 ? "float32" : "int32"; }

int64_t numel_of(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    MOE_REQUIRE(d >= 0, "tensor dimension ", d, " in shape ", to_string(shape), " must be >= 0");
    n *= d;
  }
  return n;
}

namespace {
constexpr size_t kAlignment = 64;  // one cache line, and what AVX-512 loads prefer

std::shared_ptr<void> allocate(int64_t numel, Device device) {
  MOE_REQUIRE(device == Device::CPU,
              "tensor allocation on ", to_string(device), " has no implementation in this build");
  size_t bytes = static_cast<size_t>(numel) * 4;
  bytes = (bytes + kAlignment - 1) / kAlignment * kAlignment;
  if (bytes == 0) bytes = kAlignment;  // keep every defined tensor's pointer non-null
  void* p = std::aligned_alloc(kAlignment, bytes);
  if (p == nullptr) throw std::bad_alloc();
  return std::shared_ptr<void>(p, std::free);
}
}  // namespace

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  Tensor t;
  t.numel_ = numel_of(shape);
  t.storage_numel_ = t.numel_;
  t.storage_ = allocate(t.numel_, device);
  t.data_ = t.storage_.get();
  t.shape_ = shape;
  t.dtype_ = dtype;
  t.device_ = device;
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.zero();
  return t;
}

Tensor Tensor::from(const Shape& shape, const std::vector<float>& values) {
  MOE_REQUIRE(numel_of(shape) == static_cast<int64_t>(values.size()), "Tensor::from: shape ",
              to_string(shape), " needs ", numel_of(shape), " values, got ", values.size());
  Tensor t = empty(shape);
  if (!values.empty()) std::memcpy(t.data_, values.data(), values.size() * sizeof(float));
  return t;
}

Tensor Tensor::from_ints(const Shape& shape, const std::vector<int32_t>& values) {
  MOE_REQUIRE(numel_of(shape) == static_cast<int64_t>(values.size()), "Tensor::from_ints: shape ",
              to_string(shape), " needs ", numel_of(shape), " values, got ", values.size());
  Tensor t = empty(shape, DType::I32);
  if (!values.empty()) std::memcpy(t.data_, values.data(), values.size() * sizeof(int32_t));
  return t;
}

int64_t Tensor::dim(int i) const {
  int r = rank();
  int j = i < 0 ? i + r : i;
  MOE_ASSERT(j >= 0 && j < r, "dimension index out of range for this tensor's rank");
  return shape_[j];
}

float* Tensor::f32() {
  MOE_ASSERT(dtype_ == DType::F32, "f32() on a non-float32 tensor");
  return static_cast<float*>(data_);
}
const float* Tensor::f32() const {
  MOE_ASSERT(dtype_ == DType::F32, "f32() on a non-float32 tensor");
  return static_cast<const float*>(data_);
}
int32_t* Tensor::i32() {
  MOE_ASSERT(dtype_ == DType::I32, "i32() on a non-int32 tensor");
  return static_cast<int32_t*>(data_);
}
const int32_t* Tensor::i32() const {
  MOE_ASSERT(dtype_ == DType::I32, "i32() on a non-int32 tensor");
  return static_cast<const int32_t*>(data_);
}

Tensor Tensor::rows(int64_t begin, int64_t end) const {
  MOE_ASSERT(rank() >= 1 && 0 <= begin && begin <= end && end <= shape_[0], "row range within dim 0");
  Tensor t = *this;
  int64_t row_elems = shape_[0] == 0 ? 0 : numel_ / shape_[0];
  t.data_ = static_cast<char*>(data_) + begin * row_elems * 4;
  t.shape_[0] = end - begin;
  t.numel_ = (end - begin) * row_elems;
  return t;
}

Tensor Tensor::reshape(const Shape& shape) const {
  MOE_REQUIRE(numel_of(shape) == numel_, "reshape from ", to_string(shape_), " to ", to_string(shape),
              " changes the number of elements");
  Tensor t = *this;
  t.shape_ = shape;
  return t;
}

void Tensor::resize(const Shape& shape) {
  const int64_t n = numel_of(shape);
  if (defined() && data_ == storage_.get() && n <= storage_numel_) {
    shape_ = shape;
    numel_ = n;
    return;
  }
  *this = empty(shape, dtype_, device_);
}

Tensor Tensor::clone() const {
  if (!defined()) return Tensor();
  Tensor t = empty(shape_, dtype_, device_);
  std::memcpy(t.data_, data_, static_cast<size_t>(numel_) * 4);
  return t;
}

void Tensor::zero() {
  MOE_ASSERT(device_ == Device::CPU, "zero() of device memory goes through the device backend");
  std::memset(data_, 0, static_cast<size_t>(numel_) * 4);
}

void Tensor::fill(float value) {
  float* p = f32();
  for (int64_t i = 0; i < numel_; ++i) p[i] = value;
}

void require_shape(const char* op, const char* arg, const Tensor& t, const Shape& expected) {
  MOE_REQUIRE(t.defined() && t.shape() == expected, op, ": ", arg, " has shape ", to_string(t.shape()),
              ", expected ", to_string(expected));
}

void require_rank(const char* op, const char* arg, const Tensor& t, int rank) {
  MOE_REQUIRE(t.defined() && t.rank() == rank, op, ": ", arg, " has shape ", to_string(t.shape()),
              ", expected a tensor of rank ", rank);
}

void require_dtype(const char* op, const char* arg, const Tensor& t, DType dtype) {
  MOE_REQUIRE(t.dtype() == dtype, op, ": ", arg, " has dtype ", to_string(t.dtype()), ", expected ",
              to_string(dtype));
}

void require_same_device(const char* op, std::initializer_list<const Tensor*> tensors) {
  const Tensor* first = nullptr;
  for (const Tensor* t : tensors) {
    if (t == nullptr || !t->defined()) continue;
    if (first == nullptr) first = t;
    MOE_REQUIRE(t->device() == first->device(), op, ": tensors are on different devices (",
                to_string(first->device()), " and ", to_string(t->device()), ")");
  }
}

}  // namespace moe

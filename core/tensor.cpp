// Tensor storage, views and shape checks.
#include "core/tensor.h"

#include <cstring>
#include <sstream>
#include <utility>

#include "core/backend.h"
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
const char* to_string(DType dtype) {
  switch (dtype) {
    case DType::F32: return "float32";
    case DType::BF16: return "bfloat16";
    case DType::I32: return "int32";
  }
  return "?";
}

int64_t dtype_size(DType dtype) { return dtype == DType::BF16 ? 2 : 4; }

bool device_available(Device device) {
  return (device == Device::CPU ? cpu::device_count() : cuda::device_count()) > 0;
}

int64_t numel_of(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    MOE_REQUIRE(d >= 0, "tensor dimension ", d, " in shape ", to_string(shape), " must be >= 0");
    n *= d;
  }
  return n;
}

namespace {
// The backend of each device; every memory operation of a tensor goes through it.
void* allocate_on(Device device, int64_t bytes) {
  return device == Device::CPU ? cpu::allocate_bytes(bytes) : cuda::allocate_bytes(bytes);
}
void free_on(Device device, void* p) { device == Device::CPU ? cpu::free_bytes(p) : cuda::free_bytes(p); }
}  // namespace

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  Tensor t;
  t.numel_ = numel_of(shape);
  t.storage_numel_ = t.numel_;
  t.storage_ = std::shared_ptr<void>(allocate_on(device, t.numel_ * dtype_size(dtype)),
                                     [device](void* p) { free_on(device, p); });
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

float* Tensor::f32() { return const_cast<float*>(std::as_const(*this).f32()); }
const float* Tensor::f32() const {
  MOE_ASSERT(dtype_ == DType::F32 && device_ == Device::CPU, "f32() on a host float32 tensor");
  return static_cast<const float*>(data_);
}
uint16_t* Tensor::bf16() { return const_cast<uint16_t*>(std::as_const(*this).bf16()); }
const uint16_t* Tensor::bf16() const {
  MOE_ASSERT(dtype_ == DType::BF16 && device_ == Device::CPU, "bf16() on a host bfloat16 tensor");
  return static_cast<const uint16_t*>(data_);
}
int32_t* Tensor::i32() { return const_cast<int32_t*>(std::as_const(*this).i32()); }
const int32_t* Tensor::i32() const {
  MOE_ASSERT(dtype_ == DType::I32 && device_ == Device::CPU, "i32() on a host int32 tensor");
  return static_cast<const int32_t*>(data_);
}

Tensor Tensor::rows(int64_t begin, int64_t end) const {
  MOE_ASSERT(rank() >= 1 && 0 <= begin && begin <= end && end <= shape_[0], "row range within dim 0");
  Tensor t = *this;
  int64_t row_elems = shape_[0] == 0 ? 0 : numel_ / shape_[0];
  t.data_ = static_cast<char*>(data_) + begin * row_elems * dtype_size(dtype_);
  t.shape_[0] = end - begin;
  t.numel_ = (end - begin) * row_elems;
  t.storage_numel_ = t.numel_;  // resize() may reuse the view's own rows, never its neighbours'
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
  if (defined() && n <= storage_numel_) {
    shape_ = shape;
    numel_ = n;
    return;
  }
  *this = empty(shape, dtype_, device_);
}

void resize_on(Tensor& buffer, const Shape& shape, Device device, DType dtype) {
  if (buffer.defined() && buffer.device() == device && buffer.dtype() == dtype)
    buffer.resize(shape);
  else
    buffer = Tensor::empty(shape, dtype, device);
}

void resize_zeroed(Tensor& buffer, const Shape& shape, Device device, DType dtype) {
  resize_on(buffer, shape, device, dtype);
  buffer.zero();
}

Tensor Tensor::clone() const {
  if (!defined()) return Tensor();
  Tensor t = empty(shape_, dtype_, device_);
  t.copy_from(*this);
  return t;
}

void Tensor::copy_from(const Tensor& src) {
  MOE_REQUIRE(src.shape() == shape_ && src.dtype() == dtype_, "copy_from: source ", to_string(src.shape()), " ",
              to_string(src.dtype()), " does not match ", to_string(shape_), " ", to_string(dtype_));
  if (src.device() == device_)
    device_ == Device::CPU ? cpu::copy_bytes(data_, src.data_, nbytes()) : cuda::copy_bytes(data_, src.data_, nbytes());
  else if (device_ == Device::CPU)  // one side is the host: the other device's backend copies across
    cuda::copy_to_host(data_, src.data_, nbytes());
  else
    cuda::copy_from_host(data_, src.data_, nbytes());
}

Tensor Tensor::to(Device device) const {
  if (!defined() || device == device_) return *this;
  Tensor t = empty(shape_, dtype_, device);
  t.copy_from(*this);
  return t;
}

void Tensor::zero() {
  device_ == Device::CPU ? cpu::zero_bytes(data_, nbytes()) : cuda::zero_bytes(data_, nbytes());
}

void Tensor::fill(float value) {
  MOE_ASSERT(dtype_ == DType::F32, "fill() of a float32 tensor");
  float* p = static_cast<float*>(data_);
  device_ == Device::CPU ? cpu::fill_f32(p, numel_, value) : cuda::fill_f32(p, numel_, value);
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

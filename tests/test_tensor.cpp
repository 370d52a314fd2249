// Unit tests of Tensor: allocation, construction from values, views (rows, reshape), clone, dims.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "core/check.h"
#include "core/tensor.h"
#include "tests/test_util.h"

namespace moe {
namespace {

using namespace test;  // NOLINT(google-build-using-namespace): the shared test helpers

TEST(Tensor, ZerosHasShapeDtypeDeviceAndZeroValues) {
  Tensor t = Tensor::zeros({3, 4});
  EXPECT_TRUE(t.defined());
  EXPECT_EQ(t.shape(), (Shape{3, 4}));
  EXPECT_EQ(t.rank(), 2);
  EXPECT_EQ(t.numel(), 12);
  EXPECT_EQ(t.dtype(), DType::F32);
  EXPECT_EQ(t.device(), Device::CPU);
  for (int64_t i = 0; i < t.numel(); ++i) EXPECT_EQ(t.f32()[i], 0.f) << "element " << i;

  Tensor ints = Tensor::zeros({5}, DType::I32);
  EXPECT_EQ(ints.dtype(), DType::I32);
  for (int64_t i = 0; i < ints.numel(); ++i) EXPECT_EQ(ints.i32()[i], 0);
}

TEST(Tensor, DefaultConstructedIsUndefined) {
  Tensor t;
  EXPECT_FALSE(t.defined());
  EXPECT_EQ(t.numel(), 0);
}

TEST(Tensor, ZeroSizedTensorIsDefined) {
  Tensor t = Tensor::zeros({0, 7});
  EXPECT_TRUE(t.defined());
  EXPECT_EQ(t.numel(), 0);
  EXPECT_EQ(t.dim(1), 7);
}

TEST(Tensor, NegativeDimensionThrows) { EXPECT_THROW(Tensor::zeros({2, -1}), InvalidArgument); }

TEST(Tensor, FromCopiesValuesRowMajor) {
  Tensor t = Tensor::from({2, 3}, {1, 2, 3, 4, 5, 6});
  EXPECT_EQ(t.shape(), (Shape{2, 3}));
  EXPECT_EQ(t.f32()[0], 1.f);
  EXPECT_EQ(t.f32()[1 * 3 + 2], 6.f);  // row 1, column 2

  Tensor ids = Tensor::from_ints({3}, {7, -1, 2});
  EXPECT_EQ(ids.dtype(), DType::I32);
  EXPECT_EQ(ids.i32()[1], -1);
}

TEST(Tensor, FromWithWrongCountThrowsNamingTheShape) {
  EXPECT_CONTAINS(error_message([] { Tensor::from({2, 3}, {1, 2, 3}); }), "(2, 3)");
  EXPECT_THROW(Tensor::from_ints({4}, {1, 2}), InvalidArgument);
}

TEST(Tensor, RowsViewSharesStorage) {
  Tensor t = Tensor::from({4, 2}, {0, 1, 2, 3, 4, 5, 6, 7});
  Tensor middle = t.rows(1, 3);
  EXPECT_EQ(middle.shape(), (Shape{2, 2}));
  EXPECT_EQ(middle.numel(), 4);
  EXPECT_EQ(middle.f32()[0], 2.f);
  middle.f32()[3] = 100.f;  // row 2, column 1 of t
  EXPECT_EQ(t.f32()[2 * 2 + 1], 100.f);

  Tensor empty_view = t.rows(4, 4);
  EXPECT_EQ(empty_view.numel(), 0);
  EXPECT_THROW(t.rows(3, 5), InternalError);  // past the end: a caller bug, not user input
}

TEST(Tensor, ViewKeepsStorageAliveAfterOriginalIsGone) {
  Tensor view;
  {
    Tensor t = Tensor::from({3, 1}, {1, 2, 3});
    view = t.rows(2, 3);
  }
  EXPECT_EQ(view.f32()[0], 3.f);
}

// Gradient tensors are views into one flat buffer (core/parameters.h): a view resized past its own
// rows must get new memory, not its neighbours' rows of the parent.
TEST(Tensor, ResizeOfAViewReusesOnlyItsOwnRows) {
  Tensor t = Tensor::from({4, 2}, {0, 1, 2, 3, 4, 5, 6, 7});
  Tensor first = t.rows(0, 1);
  first.resize({3, 2});
  first.fill(-1.f);
  EXPECT_EQ(t.f32()[0], 0.f) << "a view grown past its rows must leave the parent alone";
  for (int64_t i = 2; i < 8; ++i) EXPECT_EQ(t.f32()[i], static_cast<float>(i)) << "parent element " << i;

  Tensor middle = t.rows(1, 3);
  middle.resize({4});  // the view's own 4 elements: reused in place
  middle.fill(9.f);
  EXPECT_EQ(middle.f32(), t.f32() + 2);
  EXPECT_EQ(t.f32()[1], 1.f);
  for (int64_t i = 2; i < 6; ++i) EXPECT_EQ(t.f32()[i], 9.f) << "parent element " << i;
  EXPECT_EQ(t.f32()[6], 6.f);
}

TEST(Tensor, ReshapeSharesStorageAndChecksNumel) {
  Tensor t = Tensor::from({2, 3}, {0, 1, 2, 3, 4, 5});
  Tensor flat = t.reshape({6});
  EXPECT_EQ(flat.shape(), (Shape{6}));
  flat.f32()[4] = -4.f;
  EXPECT_EQ(t.f32()[4], -4.f);
  EXPECT_THROW(t.reshape({4, 2}), InvalidArgument);
}

TEST(Tensor, CloneIsDeep) {
  Tensor t = Tensor::from({2, 2}, {1, 2, 3, 4});
  Tensor copy = t.clone();
  EXPECT_EQ(copy.shape(), t.shape());
  copy.f32()[0] = 9.f;
  EXPECT_EQ(t.f32()[0], 1.f);

  Tensor view_copy = t.rows(1, 2).clone();  // cloning a view copies only the view's rows
  EXPECT_EQ(view_copy.shape(), (Shape{1, 2}));
  EXPECT_EQ(view_copy.f32()[0], 3.f);
}

TEST(Tensor, DimCountsNegativeIndicesFromTheEnd) {
  Tensor t = Tensor::zeros({2, 3, 5});
  EXPECT_EQ(t.dim(0), 2);
  EXPECT_EQ(t.dim(-1), 5);
  EXPECT_EQ(t.dim(-3), 2);
  EXPECT_THROW(t.dim(3), InternalError);
  EXPECT_THROW(t.dim(-4), InternalError);
}

TEST(Tensor, FillAndZero) {
  Tensor t = Tensor::zeros({3});
  t.fill(2.5f);
  for (int64_t i = 0; i < 3; ++i) EXPECT_EQ(t.f32()[i], 2.5f);
  t.zero();
  for (int64_t i = 0; i < 3; ++i) EXPECT_EQ(t.f32()[i], 0.f);
}

TEST(Tensor, WrongDtypeAccessIsAnInternalError) {
  Tensor t = Tensor::zeros({2});
  EXPECT_THROW(t.i32(), InternalError);
}

// Without the CUDA backend, or with it and no device: refused, naming which.
TEST(Tensor, AllocationOnCudaWithoutBackendOrDeviceThrows) {
  if (device_available(Device::CUDA)) GTEST_SKIP() << "a CUDA device is present";
  const char* why = MOE_HAVE_CUDA ? "allocate_bytes: no CUDA device" : "allocate_bytes has no CUDA implementation in this build";
  EXPECT_CONTAINS(error_message([] { Tensor::zeros({2, 2}, DType::F32, Device::CUDA); }), why);
  EXPECT_CONTAINS(error_message([] { Tensor::zeros({2, 2}).to(Device::CUDA); }), why);
}

TEST(Tensor, ElementSizeComesFromTheDtype) {
  EXPECT_EQ(dtype_size(DType::F32), 4);
  EXPECT_EQ(dtype_size(DType::BF16), 2);
  EXPECT_EQ(dtype_size(DType::I32), 4);
  Tensor h = Tensor::empty({3, 5}, DType::BF16);
  EXPECT_EQ(h.nbytes(), 30);
  for (int i = 0; i < 15; ++i) h.bf16()[i] = static_cast<uint16_t>(0x3f80 + i);  // 1.0 and up, as bf16 bits
  // Views and copies step over 2-byte elements.
  EXPECT_EQ(h.rows(1, 3).bf16()[0], 0x3f80 + 5);
  Tensor c = h.clone();
  EXPECT_EQ(c.bf16()[14], 0x3f80 + 14);
  c.zero();
  EXPECT_EQ(c.bf16()[14], 0);
  EXPECT_EQ(h.bf16()[14], 0x3f80 + 14);  // the clone owns its storage
  EXPECT_EQ(to_string(DType::BF16), std::string("bfloat16"));
}

TEST(Tensor, AccessorsCheckTheDtype) {
  Tensor h = Tensor::zeros({2}, DType::BF16);
  EXPECT_THROW(h.f32(), InternalError);
  EXPECT_THROW(Tensor::zeros({2}).bf16(), InternalError);
  EXPECT_THROW(h.fill(1.f), InternalError);  // fill is for float32
}

TEST(Tensor, ToTheSameDeviceSharesStorage) {
  Tensor t = Tensor::from({2}, {1.f, 2.f});
  Tensor same = t.to(Device::CPU);
  same.f32()[0] = 7.f;
  EXPECT_EQ(t.f32()[0], 7.f);
}

TEST(Tensor, ShapeToString) {
  EXPECT_EQ(to_string(Shape{4, 512}), "(4, 512)");
  EXPECT_EQ(to_string(Shape{}), "()");
}

TEST(Tensor, RequireShapeNamesOpArgumentAndShapes) {
  Tensor t = Tensor::zeros({3, 4});
  EXPECT_EQ(error_message([&] { require_shape("my_op", "weight", t, {5, 4}); }),
            "my_op: weight has shape (3, 4), expected (5, 4)");
  EXPECT_NO_THROW(require_shape("my_op", "weight", t, {3, 4}));
  EXPECT_THROW(require_shape("my_op", "weight", Tensor(), {}), InvalidArgument);  // undefined
  EXPECT_THROW(require_dtype("my_op", "ids", t, DType::I32), InvalidArgument);
  EXPECT_THROW(require_rank("my_op", "x", t, 1), InvalidArgument);
}

}  // namespace
}  // namespace moe

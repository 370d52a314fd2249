// Tests of the communicators: every collective of the MPI world communicator checked against values
// each rank can compute on its own (run at 1, 2 and 4 ranks), split, the local communicator, and
// MPI_CHECK's error messages.
#include <gtest/gtest.h>

#include <climits>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/mpi/mpi_communicator.h"
#include "tests/mpi_test_util.h"
#include "tests/test_util.h"

namespace moe {
namespace {

using namespace test;  // NOLINT(google-build-using-namespace): the shared test helpers

int world_rank() { return test_world().rank(); }
int world_size() { return test_world().size(); }

TEST(MpiCommunicator, RankAndSizeMatchMpiWorld) {
  Communicator& world = test_world();
  int rank = -1, size = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  EXPECT_EQ(world.rank(), rank);
  EXPECT_EQ(world.size(), size);
  EXPECT_GE(world.size(), 1);
  EXPECT_GE(world.rank(), 0);
  EXPECT_LT(world.rank(), world.size());
  EXPECT_STREQ(world.backend(), "mpi");
}

// --- all_reduce: every scalar type and op against closed forms ---

template <typename T>
class MpiAllReduce : public ::testing::Test {};
using ScalarTypes = ::testing::Types<float, double, int32_t, int64_t>;
TYPED_TEST_SUITE(MpiAllReduce, ScalarTypes);

// Rank r contributes sign(e) * (r + 1) * (e + 1) * scale to element e, signs alternating, so max and
// min pick different ranks for positive and negative elements. scale pushes int64 past 32 bits.
// All values and sums are integers below 2^24, exact in float.
template <typename T>
T contribution(int rank, int64_t e) {
  const T scale = sizeof(T) == 8 && std::is_integral_v<T> ? T(int64_t(1) << 33) : T(1);
  const T sign = e % 2 == 0 ? T(1) : T(-1);
  return sign * T(rank + 1) * T(e + 1) * scale;
}

TYPED_TEST(MpiAllReduce, SumMaxMinMatchClosedForms) {
  using T = TypeParam;
  Communicator& world = test_world();
  const int n = world.size();
  const int64_t count = 1001;  // odd, not a power of two: exercises uneven segments inside MPI
  const T scale = contribution<T>(0, 0);
  for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min}) {
    std::vector<T> data(count);
    for (int64_t e = 0; e < count; ++e) data[e] = contribution<T>(world.rank(), e);
    all_reduce(world, data.data(), count, op);
    for (int64_t e = 0; e < count; ++e) {
      const bool positive = e % 2 == 0;
      const T base = (positive ? T(1) : T(-1)) * T(e + 1) * scale;  // rank 0's value
      T expected{};
      if (op == ReduceOp::Sum) expected = base * T(n * (n + 1) / 2);  // sum of (r + 1) over ranks
      if (op == ReduceOp::Max) expected = positive ? base * T(n) : base;
      if (op == ReduceOp::Min) expected = positive ? base : base * T(n);
      ASSERT_EQ(data[e], expected) << "op " << static_cast<int>(op) << " element " << e << " ranks " << n;
    }
  }
}

TEST(MpiCommunicator, AllReduceValueHelperAndZeroCount) {
  Communicator& world = test_world();
  EXPECT_EQ(all_reduce_value<int64_t>(world, 1), world.size());
  EXPECT_EQ(all_reduce_value<int32_t>(world, world.rank(), ReduceOp::Max), world.size() - 1);
  all_reduce<float>(world, nullptr, 0);  // nothing to reduce: must not fail or hang
}

// --- all_to_all ---

TEST(MpiCommunicator, AllToAllDeliversBlockJToRankJ) {
  Communicator& world = test_world();
  const int n = world.size(), me = world.rank();
  const int block = 2;  // int64 values per block
  // Rank i sends 1000*i + j (+ 100000 * k for the k-th value of the block) to rank j.
  std::vector<int64_t> send(n * block), recv(n * block, -1);
  for (int j = 0; j < n; ++j)
    for (int k = 0; k < block; ++k) send[j * block + k] = 1000 * me + j + 100000 * k;
  world.all_to_all(send.data(), recv.data(), block * int64_t(sizeof(int64_t)));
  for (int j = 0; j < n; ++j)
    for (int k = 0; k < block; ++k)
      EXPECT_EQ(recv[j * block + k], 1000 * j + me + 100000 * k) << "from rank " << j << " value " << k;
}

TEST(MpiCommunicator, AllToAllRejectsBlockLargerThanInt) {
  // The same arguments on every rank, so every rank throws before any MPI call.
  EXPECT_THROW(test_world().all_to_all(nullptr, nullptr, int64_t(INT_MAX) + 1), CommError);
}

// --- all_to_all_v ---

// Rows rank src sends to rank dst. Uneven, with zeros; at 2 ranks and more the last rank sends
// nothing at all and rank 0 receives nothing.
int64_t rows_between(int src, int dst, int n) {
  if (n == 1) return 3;
  if (src == n - 1 || dst == 0) return 0;
  return (3 * src + 5 * dst + 1) % 4;
}

float float_value(int src, int dst, int64_t row, int col) {
  return float(src * 10000 + dst * 1000 + row * 10 + col);  // integers below 2^24: exact
}

uint8_t byte_value(int src, int dst, int64_t row, int b) {
  return static_cast<uint8_t>(src * 31 + dst * 17 + row * 7 + b * 3 + 1);
}

// Builds the send buffer and counts of rows of `width` elements of T, exchanges them, and checks every
// received element against value(src, dst, row, col).
template <typename T, typename Value>
void check_all_to_all_v(Communicator& comm, int width, Value value, bool non_blocking = false) {
  const int n = comm.size(), me = comm.rank();
  std::vector<int64_t> send_rows(n), recv_rows(n);
  std::vector<T> send;
  int64_t recv_total = 0;
  for (int j = 0; j < n; ++j) {
    send_rows[j] = rows_between(me, j, n);
    recv_rows[j] = rows_between(j, me, n);
    recv_total += recv_rows[j];
    for (int64_t r = 0; r < send_rows[j]; ++r)
      for (int c = 0; c < width; ++c) send.push_back(value(me, j, r, c));
  }
  // Exactly sized (so AddressSanitizer catches any overrun); empty vectors give null data().
  std::vector<T> recv(recv_total * width, T(0xEE));
  if (non_blocking) {
    std::unique_ptr<CommRequest> request = comm.start_all_to_all_v(send.data(), send_rows.data(), recv.data(),
                                                                   recv_rows.data(), width * int64_t(sizeof(T)),
                                                                   Stream::host());
    send_rows.assign(n, -1);  // the counts were copied at the start
    request->wait();
    for (int j = 0; j < n; ++j) recv_rows[j] = rows_between(j, me, n);
  } else {
    comm.all_to_all_v(send.data(), send_rows.data(), recv.data(), recv_rows.data(), width * int64_t(sizeof(T)),
                      Stream::host());
  }
  int64_t offset = 0;
  for (int j = 0; j < n; ++j) {
    for (int64_t r = 0; r < recv_rows[j]; ++r)
      for (int c = 0; c < width; ++c)
        ASSERT_EQ(recv[(offset + r) * width + c], value(j, me, r, c))
            << "rank " << me << " of " << n << ": from rank " << j << " row " << r << " col " << c;
    offset += recv_rows[j];
  }
}

TEST(MpiCommunicator, AllToAllVFloatRowsWithUnevenAndZeroCounts) {
  check_all_to_all_v<float>(test_world(), 5, float_value);
}

TEST(MpiCommunicator, AllToAllVSixByteRows) {
  // 6 bytes: not a multiple of 4, so any float-sized assumption in the row datatype would show.
  check_all_to_all_v<uint8_t>(test_world(), 6, byte_value);
}

TEST(MpiCommunicator, AllToAllVAlternatingRowSizesReuseCachedTypes) {
  for (int repeat = 0; repeat < 3; ++repeat) {
    check_all_to_all_v<float>(test_world(), 5, float_value);
    check_all_to_all_v<uint8_t>(test_world(), 6, byte_value);
    check_all_to_all_v<uint8_t>(test_world(), 1, byte_value);
  }
}

TEST(MpiCommunicator, NonBlockingAllToAllVDeliversTheSameRows) {
  check_all_to_all_v<float>(test_world(), 5, float_value, /*non_blocking=*/true);
  check_all_to_all_v<uint8_t>(test_world(), 6, byte_value, /*non_blocking=*/true);
}

TEST(MpiCommunicator, NonBlockingAllReducesInFlightTogether) {
  Communicator& world = test_world();
  const int n = world.size();
  std::vector<float> a(1001);
  std::vector<int64_t> b(17);
  for (size_t e = 0; e < a.size(); ++e) a[e] = contribution<float>(world.rank(), static_cast<int64_t>(e));
  for (size_t e = 0; e < b.size(); ++e) b[e] = contribution<int64_t>(world.rank(), static_cast<int64_t>(e));
  std::unique_ptr<CommRequest> ra = world.start_all_reduce(a.data(), 1001, ScalarType::F32, ReduceOp::Sum,
                                                                Stream::host());
  {
    // Destroying a pending request waits for it.
    std::unique_ptr<CommRequest> rb = world.start_all_reduce(b.data(), 17, ScalarType::I64, ReduceOp::Max,
                                                                  Stream::host());
  }
  ra->wait();
  ra->wait();  // a second wait is a no-op
  for (size_t e = 0; e < a.size(); ++e)
    ASSERT_EQ(a[e], contribution<float>(0, static_cast<int64_t>(e)) * float(n * (n + 1) / 2)) << e;
  for (size_t e = 0; e < b.size(); ++e) {
    const int64_t base = contribution<int64_t>(0, static_cast<int64_t>(e));
    ASSERT_EQ(b[e], e % 2 == 0 ? base * n : base) << e;
  }
}

TEST(MpiCommunicator, TensorFormsCheckDtypeRowsAndStream) {
  Communicator& world = test_world();
  const int n = world.size(), me = world.rank();
  const Stream host = Stream::host();
  Tensor f = Tensor::from({2}, {1.f, float(me)});
  all_reduce(world, f, host);
  EXPECT_EQ(f.f32()[0], float(n));
  EXPECT_EQ(f.f32()[1], float(n * (n - 1) / 2));
  start_all_reduce(world, f, host)->wait();
  EXPECT_EQ(f.f32()[0], float(n * n));
  Tensor i = Tensor::from_ints({1}, {me});
  all_reduce(world, i, host, ReduceOp::Max);
  EXPECT_EQ(i.i32()[0], n - 1);
  Tensor h = Tensor::zeros({2}, DType::BF16);
  EXPECT_CONTAINS(error_message([&] { all_reduce(world, h, host); }), "all_reduce: data has dtype bfloat16");
  // Host tensors in a CUDA stream: refused before any call, on every rank alike.
  const Stream cuda{Device::CUDA, nullptr};
  EXPECT_CONTAINS(error_message([&] { all_reduce(world, f, cuda); }),
                  "all_reduce: data is a cpu tensor, but the collective runs in a cuda stream");
  // The MPI communicator itself takes only the host stream.
  EXPECT_CONTAINS(error_message<CommError>([&] { world.all_reduce(f.data(), 2, ScalarType::F32, ReduceOp::Sum, cuda); }),
                  "mpi all_reduce: this communicator runs on the host");

  // Two rows of 3 floats to every rank, tagged with (source, destination).
  std::vector<int64_t> rows(n, 2);
  Tensor send = Tensor::empty({2 * n, 3}), recv = Tensor::empty({2 * n, 3});
  for (int64_t r = 0; r < 2 * n; ++r)
    for (int c = 0; c < 3; ++c) send.f32()[r * 3 + c] = float(me * 100 + (r / 2) * 10 + c);
  for (bool non_blocking : {false, true}) {
    recv.fill(-1.f);
    if (non_blocking) start_all_to_all_v(world, send, rows, recv, rows, host)->wait();
    else all_to_all_v(world, send, rows, recv, rows, host);
    for (int64_t r = 0; r < 2 * n; ++r)
      for (int c = 0; c < 3; ++c) ASSERT_EQ(recv.f32()[r * 3 + c], float((r / 2) * 100 + me * 10 + c)) << r << " " << c;
  }
  // The same verdict on every rank before any MPI call.
  std::vector<int64_t> wrong(n, 1);
  EXPECT_CONTAINS(error_message([&] { all_to_all_v(world, send, wrong, recv, rows, host); }),
                  "all_to_all_v: the row counts do not add up");
  Tensor narrow = Tensor::empty({2 * n, 2});
  EXPECT_CONTAINS(error_message([&] { all_to_all_v(world, send, rows, narrow, rows, host); }),
                  "must be rows of the same width and dtype");
  EXPECT_CONTAINS(error_message([&] { start_all_to_all_v(world, send, rows, recv, rows, cuda); }),
                  "all_to_all_v: send is a cpu tensor, but the collective runs in a cuda stream");
}

TEST(MpiCommunicator, AllToAllVNothingAnywhereWithNullBuffers) {
  Communicator& world = test_world();
  const std::vector<int64_t> zeros(world.size(), 0);
  world.all_to_all_v(nullptr, zeros.data(), nullptr, zeros.data(), 24, Stream::host());
}

TEST(MpiCommunicator, AllToAllVRejectsCountsLargerThanInt) {
  Communicator& world = test_world();
  // The same counts on every rank, so every rank throws before any MPI call.
  const std::vector<int64_t> huge(world.size(), int64_t(INT_MAX) + 1);
  EXPECT_CONTAINS(error_message<CommError>([&] { world.all_to_all_v(nullptr, huge.data(), nullptr, huge.data(), 4, Stream::host()); }),
                  "send_rows[0] = 2147483648");
}

// --- all_to_all_blocks ---

constexpr int64_t kBlocks = 3;  // blocks per peer (local experts)

// Rows rank src sends to rank dst in block b: uneven, with empty blocks at every size.
int64_t block_rows(int src, int dst, int64_t b) { return (src + 2 * dst + 3 * b) % 4; }

template <typename T>
T block_value(int src, int dst, int64_t b, int64_t row, int col) {
  return static_cast<T>(src * 53 + dst * 29 + b * 17 + row * 7 + col * 3 + 1);  // < 256, exact in any T
}

// Rows of `width` elements of T from dispatch order (peer-major) into expert order (block-major), then
// back into a fresh dispatch-order buffer: each received row checked against block_value, the rows
// between blocks left as they were on both trips, and the round trip giving back what was sent.
template <typename T>
void check_all_to_all_blocks(Communicator& comm, int width) {
  const int n = comm.size(), me = comm.rank();
  const int64_t row_bytes = width * int64_t(sizeof(T));
  const RowBlocks dispatch = spaced_blocks(n, kBlocks, false, [&](int j, int64_t b) { return block_rows(me, j, b); });
  const RowBlocks expert = spaced_blocks(n, kBlocks, true, [&](int j, int64_t b) { return block_rows(j, me, b); });
  const T poison = T(0xEE);
  std::vector<T> send(dispatch.end_row() * width, poison), expected(expert.end_row() * width, poison);
  for (int j = 0; j < n; ++j)
    for (int64_t b = 0; b < kBlocks; ++b) {
      const int64_t i = j * kBlocks + b;
      for (int64_t r = 0; r < dispatch.rows[i]; ++r)
        for (int c = 0; c < width; ++c) send[(dispatch.offset[i] + r) * width + c] = block_value<T>(me, j, b, r, c);
      for (int64_t r = 0; r < expert.rows[i]; ++r)
        for (int c = 0; c < width; ++c) expected[(expert.offset[i] + r) * width + c] = block_value<T>(j, me, b, r, c);
    }
  std::vector<T> recv(expected.size(), poison), back(send.size(), poison);
  comm.all_to_all_blocks(send.data(), dispatch, recv.data(), expert, row_bytes, Stream::host());
  EXPECT_EQ(recv, expected) << "rank " << me << " of " << n << ", into expert order";
  comm.all_to_all_blocks(recv.data(), expert, back.data(), dispatch, row_bytes, Stream::host());
  EXPECT_EQ(back, send) << "rank " << me << " of " << n << ", back into dispatch order";
}

TEST(MpiCommunicator, AllToAllBlocksIntoExpertOrderAndBack) {
  check_all_to_all_blocks<float>(test_world(), 5);
  check_all_to_all_blocks<uint8_t>(test_world(), 6);  // rows not a multiple of 4 bytes
  check_all_to_all_blocks<uint8_t>(test_world(), 1);
}

TEST(MpiCommunicator, AllToAllBlocksOfNothing) {
  Communicator& world = test_world();
  const int64_t blocks = world.size() * kBlocks;
  const RowBlocks none{kBlocks, std::vector<int64_t>(blocks, 5), std::vector<int64_t>(blocks, 0)};
  world.all_to_all_blocks(nullptr, none, nullptr, none, 24, Stream::host());  // null buffers: nothing moves
  const RowBlocks no_blocks{0, {}, {}};
  world.all_to_all_blocks(nullptr, no_blocks, nullptr, no_blocks, 24, Stream::host());
}

TEST(MpiCommunicator, AllToAllBlocksRefusesBadLayoutsBeforeAnyCall) {
  // The same arguments on every rank, so every rank throws before any MPI call.
  Communicator& world = test_world();
  const int n = world.size();
  char buffer[8] = {};
  const auto call = [&](const RowBlocks& send_blocks, const RowBlocks& recv_blocks) {
    return error_message<CommError>(
        [&] { world.all_to_all_blocks(buffer, send_blocks, buffer, recv_blocks, 1, Stream::host()); });
  };
  const RowBlocks ok{1, std::vector<int64_t>(n, 0), std::vector<int64_t>(n, 0)};
  const RowBlocks two{2, std::vector<int64_t>(2 * n, 0), std::vector<int64_t>(2 * n, 0)};
  EXPECT_CONTAINS(call(ok, two), "mpi all_to_all_blocks: blocks_per_peer = 1 (send) and 2 (recv) must be equal");
  const RowBlocks short_rows{1, std::vector<int64_t>(n, 0), std::vector<int64_t>(n + 1, 0)};
  EXPECT_CONTAINS(call(ok, short_rows), "mpi all_to_all_blocks: recv_blocks has ", "counts; ",
                  std::to_string(n) + " ranks x 1 blocks need " + std::to_string(n));
  RowBlocks negative = ok;
  negative.offset.back() = -1;
  EXPECT_CONTAINS(call(negative, ok), "mpi all_to_all_blocks: send_blocks block ", "has offset -1 and 0 rows");
  RowBlocks huge = ok;
  huge.rows[0] = int64_t(INT_MAX) + 1;
  EXPECT_CONTAINS(call(ok, huge), "mpi all_to_all_blocks: recv_blocks.rows[0] = 2147483648 must be in [0, ");
  EXPECT_CONTAINS(
      error_message<CommError>([&] { world.all_to_all_blocks(nullptr, huge, buffer, ok, 1, Stream::host()); }),
                  "mpi all_to_all_blocks: null buffer with 2147483648 rows to send");
  EXPECT_CONTAINS(error_message<CommError>(
                      [&] { world.all_to_all_blocks(buffer, ok, buffer, ok, 1, Stream{Device::CUDA, nullptr}); }),
                  "mpi all_to_all_blocks: this communicator runs on the host");
}

TEST(MpiCommunicator, AllToAllBlocksTensorFormChecksRowsAndBounds) {
  Communicator& world = test_world();
  const int n = world.size(), me = world.rank();
  const Stream host = Stream::host();
  // One row of 2 floats to every rank, received in reverse rank order.
  RowBlocks in_order{1, std::vector<int64_t>(n), std::vector<int64_t>(n, 1)};
  RowBlocks reversed = in_order;
  for (int j = 0; j < n; ++j) {
    in_order.offset[j] = j;
    reversed.offset[j] = n - 1 - j;
  }
  Tensor send = Tensor::empty({n, 2}), recv = Tensor::empty({n, 2});
  for (int j = 0; j < n; ++j) send.f32()[j * 2] = send.f32()[j * 2 + 1] = float(me * 10 + j);
  all_to_all_blocks(world, send, in_order, recv, reversed, host);
  for (int j = 0; j < n; ++j) EXPECT_EQ(recv.f32()[(n - 1 - j) * 2 + 1], float(j * 10 + me)) << j;

  RowBlocks past_the_end = reversed;
  past_the_end.offset[0] = n;
  EXPECT_CONTAINS(error_message([&] { all_to_all_blocks(world, send, in_order, recv, past_the_end, host); }),
                  "all_to_all_blocks: the blocks end at row ", "row " + std::to_string(n + 1) + " of recv (" +
                  std::to_string(n) + ", 2); they must lie within the tensors' rows");
  Tensor narrow = Tensor::empty({n, 3});
  EXPECT_CONTAINS(error_message([&] { all_to_all_blocks(world, send, in_order, narrow, reversed, host); }),
                  "all_to_all_blocks: send ", "must be rows of the same width and dtype");
  EXPECT_CONTAINS(error_message<CommError>([&] { all_to_all_blocks(world, send, in_order, recv, RowBlocks{}, host); }),
                  "all_to_all_blocks: blocks_per_peer = 1 (send) and 0 (recv)");
  const Stream cuda{Device::CUDA, nullptr};
  EXPECT_CONTAINS(error_message([&] { all_to_all_blocks(world, send, in_order, recv, reversed, cuda); }),
                  "all_to_all_blocks: send is a cpu tensor, but the collective runs in a cuda stream");
}

// --- all_gather, broadcast, barrier ---

TEST(MpiCommunicator, AllGatherInRankOrder) {
  Communicator& world = test_world();
  const int n = world.size();
  int32_t send[3];
  for (int k = 0; k < 3; ++k) send[k] = world.rank() * 10 + k;
  std::vector<int32_t> recv(n * 3, -1);
  world.all_gather(send, recv.data(), sizeof(send));
  for (int j = 0; j < n; ++j)
    for (int k = 0; k < 3; ++k) EXPECT_EQ(recv[j * 3 + k], j * 10 + k) << "from rank " << j;
}

TEST(MpiCommunicator, BroadcastFromLastRank) {
  Communicator& world = test_world();
  const int root = world.size() - 1;  // non-zero whenever there is more than one rank
  std::vector<uint8_t> data(1001);
  for (size_t i = 0; i < data.size(); ++i)
    data[i] = world.rank() == root ? static_cast<uint8_t>(i * 7 + 3) : uint8_t(0);
  world.broadcast(data.data(), int64_t(data.size()), root);
  for (size_t i = 0; i < data.size(); ++i) ASSERT_EQ(data[i], static_cast<uint8_t>(i * 7 + 3)) << "byte " << i;
  world.broadcast(nullptr, 0, root);  // zero bytes: nothing to do
}

TEST(MpiCommunicator, BroadcastRejectsRootOutOfRange) {
  Communicator& world = test_world();
  int x = 0;
  EXPECT_THROW(world.broadcast(&x, sizeof(x), world.size()), CommError);
  EXPECT_THROW(world.broadcast(&x, sizeof(x), -1), CommError);
}

TEST(MpiCommunicator, BarrierReturns) {
  test_world().barrier();
  test_world().barrier();
}

// --- split ---

TEST(MpiCommunicator, SplitEvenOddRanks) {
  const int n = world_size(), me = world_rank();
  const int color = me % 2;
  std::unique_ptr<Communicator> sub = test_world().split(color, me);
  ASSERT_NE(sub, nullptr);
  EXPECT_STREQ(sub->backend(), "mpi");
  EXPECT_EQ(sub->size(), color == 0 ? (n + 1) / 2 : n / 2);
  EXPECT_EQ(sub->rank(), me / 2);
  int64_t expected = 0;  // sum of the world ranks with my parity
  for (int r = color; r < n; r += 2) expected += r;
  EXPECT_EQ(all_reduce_value<int64_t>(*sub, me), expected);
}

TEST(MpiCommunicator, SplitOrdersByKey) {
  const int n = world_size(), me = world_rank();
  std::unique_ptr<Communicator> reversed = test_world().split(0, -me);
  EXPECT_EQ(reversed->size(), n);
  EXPECT_EQ(reversed->rank(), n - 1 - me);
  std::vector<int32_t> gathered(n, -1);
  const int32_t mine = me;
  reversed->all_gather(&mine, gathered.data(), sizeof(mine));
  for (int j = 0; j < n; ++j) EXPECT_EQ(gathered[j], n - 1 - j) << "position " << j;
}

TEST(MpiCommunicator, SplitIntoConsecutivePairs) {
  const int n = world_size(), me = world_rank();
  if (n % 2 != 0) GTEST_SKIP() << "pairs need an even number of ranks, have " << n;
  std::unique_ptr<Communicator> pair = test_world().split(me / 2, me);
  EXPECT_EQ(pair->size(), 2);
  EXPECT_EQ(pair->rank(), me % 2);
  EXPECT_EQ(all_reduce_value<int64_t>(*pair, me), 4 * (me / 2) + 1);  // 2g + (2g + 1)
  int32_t members[2] = {-1, -1};
  const int32_t mine = me;
  pair->all_gather(&mine, members, sizeof(mine));
  EXPECT_EQ(members[0], 2 * (me / 2));
  EXPECT_EQ(members[1], 2 * (me / 2) + 1);
  // A collective on the pair while the other pairs do theirs: traffic must not cross.
  check_all_to_all_v<float>(*pair, 5, float_value);
}

TEST(MpiCommunicator, SplitRejectsNegativeColor) {
  EXPECT_THROW(test_world().split(-1, 0), CommError);
}

TEST(MpiCommunicator, SecondWorldCommunicatorIsIndependentAndFreed) {
  std::unique_ptr<Communicator> other = make_mpi_world_communicator();
  EXPECT_EQ(other->size(), world_size());
  EXPECT_EQ(other->rank(), world_rank());
  EXPECT_EQ(all_reduce_value<int32_t>(*other, 2), 2 * world_size());
  auto* mpi = dynamic_cast<MpiCommunicator*>(other.get());
  ASSERT_NE(mpi, nullptr);
  EXPECT_NE(mpi->handle(), MPI_COMM_WORLD);  // a duplicate, not the world itself
}

// --- agreeing on a failure ---

TEST(Communicator, ThrowIfAnyRankFailedGivesEveryRankTheLowestFailingRanksMessage) {
  Communicator& world = test_world();
  const int n = world.size(), me = world.rank();
  throw_if_any_rank_failed(world, "");  // nobody failed: returns on every rank
  // The upper half of the ranks fail (at 1 rank: rank 0), each with its own message.
  const int first = n / 2;
  const std::string mine = me >= first ? "rank " + std::to_string(me) + " could not" : "";
  EXPECT_EQ(error_message([&] { throw_if_any_rank_failed(world, mine); }),
            "rank " + std::to_string(first) + " could not");
}

// --- MPI_CHECK ---

TEST(MpiCheck, FailingCallThrowsCommErrorNamingCallRankAndMpiMessage) {
  auto* world = dynamic_cast<MpiCommunicator*>(&test_world());
  ASSERT_NE(world, nullptr);
  const int invalid_root = world->size();  // every rank makes the same failing call: nothing hangs
  int value = 0;
  char expected_message[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  MPI_Error_string(MPI_ERR_ROOT, expected_message, &length);
  SCOPED_TRACE("MPI_Bcast with root " + std::to_string(invalid_root));
  const std::string what =
      error_message<CommError>([&] { MPI_CHECK(MPI_Bcast(&value, 1, MPI_INT, invalid_root, world->handle())); });
  EXPECT_CONTAINS(what, "test_communicator.cpp:", "MPI_Bcast(&value, 1, MPI_INT, invalid_root, world->handle()) failed",
                  "on rank " + std::to_string(world_rank()) + ":", std::string(expected_message, length));
}

TEST(MpiCheck, SuccessfulCallDoesNothing) {
  int size = 0;
  MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &size));
  EXPECT_EQ(size, world_size());
}

// --- the local communicator (each rank on its own) ---

TEST(LocalCommunicator, IsRankZeroOfOne) {
  std::unique_ptr<Communicator> local = make_local_communicator();
  EXPECT_EQ(local->rank(), 0);
  EXPECT_EQ(local->size(), 1);
  EXPECT_STREQ(local->backend(), "local");
  std::unique_ptr<Communicator> sub = local->split(3, 7);
  EXPECT_EQ(sub->size(), 1);
  EXPECT_STREQ(sub->backend(), "local");
  local->barrier();
}

TEST(LocalCommunicator, CollectivesAreCopiesOrNothing) {
  std::unique_ptr<Communicator> local = make_local_communicator();
  double values[3] = {1.5, -2.0, 7.0};
  all_reduce(*local, values, 3, ReduceOp::Max);
  EXPECT_EQ(values[0], 1.5);
  EXPECT_EQ(values[1], -2.0);
  EXPECT_EQ(values[2], 7.0);

  int64_t block[2] = {11, 12}, block_out[2] = {0, 0};
  local->all_to_all(block, block_out, sizeof(block));
  EXPECT_EQ(block_out[0], 11);
  EXPECT_EQ(block_out[1], 12);

  int32_t mine = 42, gathered = 0;
  local->all_gather(&mine, &gathered, sizeof(mine));
  EXPECT_EQ(gathered, 42);

  local->broadcast(&mine, sizeof(mine), 0);
  EXPECT_EQ(mine, 42);
  EXPECT_THROW(local->broadcast(&mine, sizeof(mine), 1), CommError);
}

TEST(LocalCommunicator, AllToAllVCopiesRows) {
  std::unique_ptr<Communicator> local = make_local_communicator();
  check_all_to_all_v<float>(*local, 5, float_value);  // 3 rows of 5 floats to itself
  check_all_to_all_v<float>(*local, 5, float_value, /*non_blocking=*/true);
  double v = 2.5;
  local->start_all_reduce(&v, 1, ScalarType::F64, ReduceOp::Sum, Stream::host())->wait();
  EXPECT_EQ(v, 2.5);
  check_all_to_all_v<uint8_t>(*local, 6, byte_value);
  const int64_t zero = 0;
  local->all_to_all_v(nullptr, &zero, nullptr, &zero, 8, Stream::host());  // nothing, with null buffers
  EXPECT_CONTAINS(error_message<CommError>([&] {
                    local->all_to_all_v(nullptr, &zero, nullptr, &zero, 8, Stream{Device::CUDA, nullptr});
                  }),
                  "local all_to_all_v: this communicator runs on the host");
}

TEST(LocalCommunicator, AllToAllBlocksCopiesBlocks) {
  std::unique_ptr<Communicator> local = make_local_communicator();
  check_all_to_all_blocks<float>(*local, 5);
  check_all_to_all_blocks<uint8_t>(*local, 6);
  const RowBlocks none{kBlocks, std::vector<int64_t>(kBlocks, 5), std::vector<int64_t>(kBlocks, 0)};
  local->all_to_all_blocks(nullptr, none, nullptr, none, 8, Stream::host());  // nothing, with null buffers
  float send[4] = {}, recv[4] = {};
  const RowBlocks two{1, {0}, {2}}, one{1, {0}, {1}};
  EXPECT_CONTAINS(error_message<CommError>([&] { local->all_to_all_blocks(send, two, recv, one, 8, Stream::host()); }),
                  "local all_to_all_blocks: on a single rank each block has as many rows to receive as to send");
  EXPECT_CONTAINS(
      error_message<CommError>([&] { local->all_to_all_blocks(nullptr, two, recv, two, 8, Stream::host()); }),
                  "local all_to_all_blocks: null buffer with rows to copy");
}

TEST(LocalCommunicator, AllToAllVRejectsMismatchedCounts) {
  std::unique_ptr<Communicator> local = make_local_communicator();
  float send[4] = {}, recv[4] = {};
  const int64_t send_rows = 2, recv_rows = 1;
  EXPECT_CONTAINS(
      error_message<CommError>([&] { local->all_to_all_v(send, &send_rows, recv, &recv_rows, 2 * sizeof(float), Stream::host()); }),
      "send_rows[0] = 2 must equal recv_rows[0] = 1");
}

}  // namespace
}  // namespace moe

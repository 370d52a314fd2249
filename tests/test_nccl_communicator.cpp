// Tests of the NCCL data communicator, under mpirun at 1 and 2 ranks. A build without NCCL: the stub
// refuses. An NCCL build, without a GPU: NCCL_CHECK's message, and a GPU it cannot use refused on every
// rank alike. With a CUDA device per rank: every data collective against the MPI communicator's result
// on the same values, the host calls, split, the refusals, and an abort ending a collective whose peer
// never comes; the host-staged communicator's all-to-all of blocks against MPI's. GPU tests skip with
// "no CUDA device" where there is none.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/nccl/nccl_communicator.h"
#include "tests/mpi_test_util.h"
#include "tests/test_util.h"

#ifndef MOE_HAVE_NCCL
#error "tests/CMakeLists.txt defines MOE_HAVE_NCCL (1: the NCCL communicator is built, 0: the stub)"
#endif
#if MOE_HAVE_NCCL
#include <cuda_runtime.h>

#include "parallel/local_rank.h"
#include "parallel/nccl/nccl_check.h"
#include "parallel/staged_communicator.h"
#endif

namespace moe {
namespace {

using namespace test;  // NOLINT(google-build-using-namespace): the shared test helpers

#if !MOE_HAVE_NCCL

TEST(NcclCommunicator, ThisBuildSaysItHasNoNccl) {
  EXPECT_CONTAINS(error_message([] { make_nccl_communicator(test_world(), 0); }), "not built with NCCL");
  EXPECT_EQ(abort_nccl_communicators(), 0);
}

#else

// --- without a GPU ---

TEST(NcclCheck, NamesTheCallFileLineRankAndNcclsMessages) {
  // NCCL refuses a null communicator before touching any device.
  const std::string message = error_message<CommError>(
      [] { NCCL_CHECK(3, ncclAllReduce(nullptr, nullptr, 1, ncclFloat32, ncclSum, nullptr, nullptr)); });
  EXPECT_CONTAINS(message, "test_nccl_communicator.cpp:", ": ncclAllReduce(nullptr, nullptr", "failed on rank 3: ",
                  ncclGetErrorString(ncclInvalidArgument), "(AllReduce : comm argument is NULL)");
  EXPECT_CONTAINS(error_message<CommError>([] { NCCL_CUDA_CHECK(2, cudaSetDevice(-1)); }),
                  "test_nccl_communicator.cpp:", ": cudaSetDevice(-1) failed on rank 2: cudaError");
}

int cuda_devices() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess ? count : 0;
}

TEST(NcclCommunicator, RefusesAGpuItCannotUseOnEveryRank) {
  // No device at all, or one past the last: every rank is refused with rank 0's message (the first
  // failing rank's), and none is left waiting.
  const int devices = cuda_devices();
  const std::string message = error_message([&] { make_nccl_communicator(test_world(), devices); });
  if (devices == 0) {
    EXPECT_CONTAINS(message, "make_nccl_communicator: rank 0 has no CUDA device (cudaGetDeviceCount: ");
  } else {
    EXPECT_CONTAINS(message, "make_nccl_communicator: rank 0: gpu = ", std::to_string(devices) + " is out of range");
  }
  EXPECT_CONTAINS(error_message([&] { make_nccl_communicator(test_world(), -1); }), "make_nccl_communicator: rank 0");
  EXPECT_EQ(abort_nccl_communicators(), 0);  // none was made
}

// --- with a GPU per rank ---

void cuda_ok(cudaError_t result, const char* call) {
  if (result != cudaSuccess) throw std::runtime_error(std::string(call) + ": " + cudaGetErrorString(result));
}
#define CUDA_OK(call) cuda_ok((call), #call)

// Device memory of the current GPU, freed on destruction.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) { CUDA_OK(cudaMalloc(&data_, bytes == 0 ? 1 : bytes)); }
  ~DeviceBuffer() { cudaFree(data_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* data() const { return data_; }

  template <typename T>
  void write(const std::vector<T>& host, cudaStream_t stream) {
    CUDA_OK(cudaMemcpyAsync(data_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice, stream));
  }
  // After everything enqueued on `stream` so far.
  template <typename T>
  std::vector<T> read(cudaStream_t stream) const {
    std::vector<T> host(bytes_ / sizeof(T));
    CUDA_OK(cudaMemcpyAsync(host.data(), data_, host.size() * sizeof(T), cudaMemcpyDeviceToHost, stream));
    CUDA_OK(cudaStreamSynchronize(stream));
    return host;
  }

 private:
  size_t bytes_;
  void* data_ = nullptr;
};

// What every rank agrees on about the GPUs (the fewest any rank sees, the most ranks on a node), and
// this rank's local rank: the GPU it uses.
struct GpuCensus {
  int fewest_devices = 0;
  int most_ranks_per_node = 1;
  bool one_node = true;
  int local_rank = 0;
};

GpuCensus gpu_census() {
  Communicator& world = test_world();
  const LocalPlacement where = local_placement(world);
  GpuCensus c;
  c.local_rank = where.local_rank;
  c.fewest_devices = all_reduce_value(world, cuda_devices(), ReduceOp::Min);
  c.most_ranks_per_node = all_reduce_value(world, where.local_size, ReduceOp::Max);
  c.one_node = c.most_ranks_per_node == world.size();
  return c;
}

// Each rank on the GPU of its local rank, with an NCCL communicator over the world and a stream. Every
// rank decides to skip from agreed values, so either all skip or none (a rank skipping alone would
// leave the others waiting).
class NcclTest : public ::testing::Test {
 protected:
  void SetUp() override {
    census_ = gpu_census();
    if (census_.fewest_devices == 0) GTEST_SKIP() << "no CUDA device";
    if (census_.fewest_devices < census_.most_ranks_per_node)
      GTEST_SKIP() << census_.most_ranks_per_node << " ranks on a node need as many CUDA devices; found "
                   << census_.fewest_devices << " (one NCCL communicator cannot hold two ranks on one GPU)";
    gpu_ = census_.local_rank;
    comm_ = make_nccl_communicator(test_world(), gpu_);
    CUDA_OK(cudaStreamCreate(&stream_));
  }
  void TearDown() override {
    comm_.reset();  // first: it finishes its work on the stream
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }
  Stream stream() const { return Stream{Device::CUDA, stream_}; }

  GpuCensus census_;
  int gpu_ = -1;
  std::unique_ptr<Communicator> comm_;
  cudaStream_t stream_ = nullptr;
};

TEST_F(NcclTest, RankSizeAndBackend) {
  EXPECT_EQ(comm_->rank(), test_world().rank());
  EXPECT_EQ(comm_->size(), test_world().size());
  EXPECT_STREQ(comm_->backend(), "nccl");
}

// Integer values in [-1000, 1000] from (rank, element): exact in every type, and so are their sums
// over a few ranks, whatever order NCCL adds them in.
template <typename T>
std::vector<T> reduce_input(int rank, int64_t count) {
  std::vector<T> v(static_cast<size_t>(count));
  for (int64_t e = 0; e < count; ++e) v[e] = T((rank * 7919 + e * 104729) % 2001 - 1000);
  return v;
}

template <typename T>
void check_all_reduce_against_mpi(Communicator& nccl, const Stream& stream) {
  const auto s = static_cast<cudaStream_t>(stream.handle);
  const int64_t count = 1001;  // odd: uneven pieces inside NCCL
  DeviceBuffer data(count * sizeof(T));
  for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min}) {
    for (bool started : {false, true}) {
      const std::vector<T> input = reduce_input<T>(nccl.rank(), count);
      std::vector<T> expected = input;
      all_reduce(test_world(), expected.data(), count, op);
      data.write(input, s);
      if (started)
        nccl.start_all_reduce(data.data(), count, scalar_type_of<T>(), op, stream)->wait();
      else
        nccl.all_reduce(data.data(), count, scalar_type_of<T>(), op, stream);
      EXPECT_EQ(data.read<T>(s), expected) << "op " << static_cast<int>(op) << (started ? ", started" : ", blocking");
    }
  }
}

TEST_F(NcclTest, AllReduceOfEveryTypeAndOpMatchesMpi) {
  check_all_reduce_against_mpi<float>(*comm_, stream());
  check_all_reduce_against_mpi<double>(*comm_, stream());
  check_all_reduce_against_mpi<int32_t>(*comm_, stream());
  check_all_reduce_against_mpi<int64_t>(*comm_, stream());
  float unused = 0;
  comm_->all_reduce(&unused, 0, ScalarType::F32, ReduceOp::Sum, stream());  // nothing: not even a buffer check
}

// Rows rank src sends to rank dst: uneven, with zeros (rank 0 sends none to rank 1, rank 1 none to itself).
int64_t rows_between(int src, int dst) { return 37 * ((src + 2 * dst + 1) % 3); }

// Exchanges rows of row_bytes bytes through NCCL (blocking, or started and waited for) and through MPI,
// from the same bytes, and compares what arrived.
void check_all_to_all_v_against_mpi(Communicator& nccl, const Stream& stream, int64_t row_bytes, bool started) {
  const auto s = static_cast<cudaStream_t>(stream.handle);
  const int n = nccl.size(), me = nccl.rank();
  std::vector<int64_t> send_rows(n), recv_rows(n);
  int64_t send_total = 0, recv_total = 0;
  for (int j = 0; j < n; ++j) {
    send_rows[j] = rows_between(me, j);
    recv_rows[j] = rows_between(j, me);
    send_total += send_rows[j];
    recv_total += recv_rows[j];
  }
  std::vector<uint8_t> send(send_total * row_bytes);
  for (size_t b = 0; b < send.size(); ++b) send[b] = static_cast<uint8_t>(me * 101 + b * 7 + 3);
  std::vector<uint8_t> expected(recv_total * row_bytes);
  test_world().all_to_all_v(send.data(), send_rows.data(), expected.data(), recv_rows.data(), row_bytes,
                            Stream::host());

  DeviceBuffer send_d(send.size()), recv_d(expected.size());
  send_d.write(send, s);
  recv_d.write(std::vector<uint8_t>(expected.size(), 0xEE), s);  // poisoned: an unwritten byte shows
  if (started) {
    std::unique_ptr<CommRequest> request =
        nccl.start_all_to_all_v(send_d.data(), send_rows.data(), recv_d.data(), recv_rows.data(), row_bytes, stream);
    send_rows.assign(n, -1);  // the counts were used at the start
    request->wait();
  } else {
    nccl.all_to_all_v(send_d.data(), send_rows.data(), recv_d.data(), recv_rows.data(), row_bytes, stream);
  }
  EXPECT_EQ(recv_d.read<uint8_t>(s), expected) << row_bytes << "-byte rows" << (started ? ", started" : ", blocking");
}

TEST_F(NcclTest, AllToAllVWithUnevenAndZeroCountsMatchesMpi) {
  for (bool started : {false, true}) {
    check_all_to_all_v_against_mpi(*comm_, stream(), 5 * sizeof(float), started);
    check_all_to_all_v_against_mpi(*comm_, stream(), 3, started);  // rows not a multiple of 4 bytes
  }
  const std::vector<int64_t> none(comm_->size(), 0);
  comm_->all_to_all_v(nullptr, none.data(), nullptr, none.data(), 8, stream());  // nothing, with null buffers
}

// Rows of row_bytes bytes from dispatch order into expert order and back (spaced_blocks layouts, with
// uneven and empty blocks), through a device communicator and through MPI from the same bytes: the
// same bytes arrive, and the rows between blocks keep their poison.
void check_all_to_all_blocks_against_mpi(Communicator& device_comm, const Stream& stream, int64_t row_bytes) {
  const auto s = static_cast<cudaStream_t>(stream.handle);
  const int n = device_comm.size(), me = device_comm.rank();
  const int64_t K = 3;
  const auto rows = [](int src, int dst, int64_t b) { return int64_t{11} * ((src + 2 * dst + b) % 3); };
  const RowBlocks dispatch = spaced_blocks(n, K, false, [&](int j, int64_t b) { return rows(me, j, b); });
  const RowBlocks expert = spaced_blocks(n, K, true, [&](int j, int64_t b) { return rows(j, me, b); });
  std::vector<uint8_t> send(dispatch.end_row() * row_bytes);
  for (size_t b = 0; b < send.size(); ++b) send[b] = static_cast<uint8_t>(me * 101 + b * 7 + 3);
  const std::vector<uint8_t> poisoned_expert(expert.end_row() * row_bytes, 0xEE), poisoned_dispatch(send.size(), 0xEE);
  std::vector<uint8_t> expected = poisoned_expert, expected_back = poisoned_dispatch;
  test_world().all_to_all_blocks(send.data(), dispatch, expected.data(), expert, row_bytes, Stream::host());
  test_world().all_to_all_blocks(expected.data(), expert, expected_back.data(), dispatch, row_bytes, Stream::host());

  DeviceBuffer send_d(send.size()), recv_d(expected.size()), back_d(send.size());
  send_d.write(send, s);
  recv_d.write(poisoned_expert, s);
  back_d.write(poisoned_dispatch, s);
  device_comm.all_to_all_blocks(send_d.data(), dispatch, recv_d.data(), expert, row_bytes, stream);
  EXPECT_EQ(recv_d.read<uint8_t>(s), expected) << row_bytes << "-byte rows into expert order";
  device_comm.all_to_all_blocks(recv_d.data(), expert, back_d.data(), dispatch, row_bytes, stream);
  EXPECT_EQ(back_d.read<uint8_t>(s), expected_back) << row_bytes << "-byte rows back into dispatch order";
}

TEST_F(NcclTest, AllToAllBlocksWithUnevenAndEmptyBlocksMatchesMpi) {
  check_all_to_all_blocks_against_mpi(*comm_, stream(), 5 * sizeof(float));
  check_all_to_all_blocks_against_mpi(*comm_, stream(), 3);
  const RowBlocks none{2, std::vector<int64_t>(2 * comm_->size(), 4), std::vector<int64_t>(2 * comm_->size(), 0)};
  comm_->all_to_all_blocks(nullptr, none, nullptr, none, 8, stream());  // nothing, with null buffers
}

TEST(StagedCommunicator, AllToAllBlocksMatchesMpi) {
  // Staged through host memory, any number of ranks may share a GPU.
  const GpuCensus census = gpu_census();
  if (census.fewest_devices == 0) GTEST_SKIP() << "no CUDA device";
  CUDA_OK(cudaSetDevice(census.local_rank % census.fewest_devices));
  std::unique_ptr<Communicator> staged = make_staged_communicator(test_world().split(0, test_world().rank()));
  const Stream stream{Device::CUDA, nullptr};
  check_all_to_all_blocks_against_mpi(*staged, stream, 5 * sizeof(float));
  check_all_to_all_blocks_against_mpi(*staged, stream, 3);
}

TEST_F(NcclTest, HostCallsRunOnTheControlCommunicator) {
  const int n = comm_->size(), me = comm_->rank();
  int64_t value = me == n - 1 ? 4242 : -1;
  comm_->broadcast(&value, sizeof value, n - 1);  // host memory, as the interface's contract says
  EXPECT_EQ(value, 4242);
  std::vector<int32_t> gathered(n, -1), blocks(n), received(n, -1);
  comm_->all_gather(&me, gathered.data(), sizeof me);
  for (int j = 0; j < n; ++j) {
    EXPECT_EQ(gathered[j], j);
    blocks[j] = me * 100 + j;
  }
  comm_->all_to_all(blocks.data(), received.data(), sizeof(int32_t));
  for (int j = 0; j < n; ++j) EXPECT_EQ(received[j], j * 100 + me);
  comm_->barrier();
}

TEST_F(NcclTest, SplitMakesNcclCommunicatorsOfTheParts) {
  std::unique_ptr<Communicator> alone = comm_->split(/*color=*/comm_->rank(), /*key=*/0);
  EXPECT_STREQ(alone->backend(), "nccl");
  EXPECT_EQ(alone->size(), 1);
  check_all_reduce_against_mpi<float>(*comm_->split(/*color=*/0, /*key=*/-comm_->rank()), stream());
  DeviceBuffer one(sizeof(int32_t));
  one.write(std::vector<int32_t>{7}, stream_);
  alone->all_reduce(one.data(), 1, ScalarType::I32, ReduceOp::Sum, stream());
  EXPECT_EQ(one.read<int32_t>(stream_), std::vector<int32_t>{7});
}

TEST_F(NcclTest, RefusesHostStreamsAndHostMemoryBeforeEnqueueing) {
  // The same refusals on every rank: each throws before any NCCL call.
  DeviceBuffer data(4 * sizeof(float));
  EXPECT_CONTAINS(error_message<CommError>(
                      [&] { comm_->all_reduce(data.data(), 4, ScalarType::F32, ReduceOp::Sum, Stream::host()); }),
                  "nccl all_reduce: this communicator moves device memory of GPU ", "not the cpu stream");
  float host[4] = {};
  EXPECT_CONTAINS(
      error_message<CommError>([&] { comm_->start_all_reduce(host, 4, ScalarType::F32, ReduceOp::Max, stream()); }),
      "nccl start_all_reduce: data is host memory; this communicator takes device memory of GPU ");
  EXPECT_CONTAINS(error_message<CommError>(
                      [&] { comm_->all_reduce(data.data(), -1, ScalarType::F32, ReduceOp::Sum, stream()); }),
                  "nccl all_reduce: count = -1 must be >= 0");
  const std::vector<int64_t> one(comm_->size(), 1);
  EXPECT_CONTAINS(error_message<CommError>([&] {
                    comm_->all_to_all_v(host, one.data(), data.data(), one.data(), sizeof(float), stream());
                  }),
                  "nccl all_to_all_v: send is host memory");
  const RowBlocks one_each{1, std::vector<int64_t>(comm_->size(), 0), one};
  EXPECT_CONTAINS(error_message<CommError>([&] {
                    comm_->all_to_all_blocks(data.data(), one_each, host, one_each, sizeof(float), stream());
                  }),
                  "nccl all_to_all_blocks: recv is host memory");
  EXPECT_CONTAINS(error_message<CommError>([&] {
                    comm_->all_to_all_blocks(data.data(), one_each, data.data(), one_each, 4, Stream::host());
                  }),
                  "nccl all_to_all_blocks: this communicator moves device memory of GPU ");
  const std::vector<int64_t> negative(comm_->size(), -2);
  EXPECT_CONTAINS(error_message<CommError>([&] {
                    comm_->all_to_all_v(data.data(), negative.data(), data.data(), one.data(), 4, stream());
                  }),
                  "nccl all_to_all_v: send_rows[0] = -2 rows of 4 bytes: the count must be >= 0");
}

TEST_F(NcclTest, RefusesMemoryAndStreamsOfAnotherGpu) {
  if (census_.fewest_devices < 2) GTEST_SKIP() << "needs 2 CUDA devices per rank; found " << census_.fewest_devices;
  const int other = (gpu_ + 1) % census_.fewest_devices;
  CUDA_OK(cudaSetDevice(other));
  cudaStream_t other_stream = nullptr;
  CUDA_OK(cudaStreamCreate(&other_stream));
  {
    DeviceBuffer elsewhere(4 * sizeof(float));
    CUDA_OK(cudaSetDevice(gpu_));
    DeviceBuffer here(4 * sizeof(float));
    EXPECT_CONTAINS(error_message<CommError>([&] {
                      comm_->all_reduce(elsewhere.data(), 4, ScalarType::F32, ReduceOp::Sum, stream());
                    }),
                    "nccl all_reduce: data is memory of GPU " + std::to_string(other));
    EXPECT_CONTAINS(error_message<CommError>([&] {
                      comm_->all_reduce(here.data(), 4, ScalarType::F32, ReduceOp::Sum,
                                        Stream{Device::CUDA, other_stream});
                    }),
                    "nccl all_reduce: the stream belongs to GPU " + std::to_string(other));
  }
  cudaStreamDestroy(other_stream);
}

TEST_F(NcclTest, AbortEndsACollectiveWhosePeerNeverComes) {
  if (comm_->size() < 2) GTEST_SKIP() << "needs 2 ranks";
  const int64_t count = 1024;
  DeviceBuffer data(count * sizeof(float));
  comm_->all_reduce(data.data(), count, ScalarType::F32, ReduceOp::Sum, stream());  // connects the ranks
  CUDA_OK(cudaStreamSynchronize(stream_));
  if (comm_->rank() == 0) {
    // Only rank 0 enters: its collective waits for the others until another thread aborts it, as the
    // trainer's watchdog does.
    std::atomic<int> aborted{-1};
    std::thread watchdog([&] {
      std::this_thread::sleep_for(std::chrono::seconds(1));
      aborted = abort_nccl_communicators();
    });
    const std::string message = error_message<CommError>(
        [&] { comm_->start_all_reduce(data.data(), count, ScalarType::F32, ReduceOp::Sum, stream())->wait(); });
    watchdog.join();
    EXPECT_CONTAINS(message, "nccl start_all_reduce: rank 0: the communicator was aborted");
    EXPECT_EQ(aborted.load(), 1);
  }
  test_world().barrier();  // the others abort theirs once rank 0 is out
  if (comm_->rank() != 0) {
    EXPECT_EQ(abort_nccl_communicators(), 1);
  }
  EXPECT_CONTAINS(error_message<CommError>(
                      [&] { comm_->all_reduce(data.data(), count, ScalarType::F32, ReduceOp::Sum, stream()); }),
                  "the communicator was aborted");
  EXPECT_EQ(abort_nccl_communicators(), 0);  // nothing left to abort
}

TEST(NcclCommunicator, RefusesTwoRanksOnOneGpu) {
  const GpuCensus census = gpu_census();
  if (census.fewest_devices == 0) GTEST_SKIP() << "no CUDA device";
  if (test_world().size() < 2 || !census.one_node) GTEST_SKIP() << "needs 2 ranks on one node";
  EXPECT_CONTAINS(error_message([] { make_nccl_communicator(test_world(), 0); }),
                  "make_nccl_communicator: ranks 0 and 1 both use the GPU ",
                  "one NCCL communicator cannot hold two ranks on one GPU");
}

#endif  // MOE_HAVE_NCCL

}  // namespace
}  // namespace moe

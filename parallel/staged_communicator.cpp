// The host-staged device communicator (parallel/staged_communicator.h).
#include "parallel/staged_communicator.h"

#include <numeric>
#include <vector>

#include "core/backend.h"
#include "core/check.h"

namespace moe {

namespace {

class StagedCommunicator final : public Communicator {
 public:
  explicit StagedCommunicator(std::unique_ptr<Communicator> host) : host_(std::move(host)) {}

  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }
  const char* backend() const override { return "mpi-staged"; }

  std::unique_ptr<Communicator> split(int color, int key) const override {
    return std::make_unique<StagedCommunicator>(host_->split(color, key));
  }

  void all_reduce(void* data, int64_t count, ScalarType type, ReduceOp op, const Stream& stream) override {
    require_device_stream("all_reduce", stream);
    const int64_t bytes = count * scalar_bytes(type);
    stage_.resize(static_cast<size_t>(bytes));
    cuda::copy_to_host(stage_.data(), data, bytes);
    host_->all_reduce(stage_.data(), count, type, op, Stream::host());
    cuda::copy_from_host(data, stage_.data(), bytes);
  }

  void all_to_all_v(const void* send, const int64_t* send_rows, void* recv, const int64_t* recv_rows,
                    int64_t row_bytes, const Stream& stream) override {
    require_device_stream("all_to_all_v", stream);
    if (send_rows == nullptr || recv_rows == nullptr)
      throw CommError("mpi-staged all_to_all_v: send_rows and recv_rows must not be null");
    const int64_t n = size();
    const int64_t send_bytes = std::accumulate(send_rows, send_rows + n, int64_t{0}) * row_bytes;
    const int64_t recv_bytes = std::accumulate(recv_rows, recv_rows + n, int64_t{0}) * row_bytes;
    stage_.resize(static_cast<size_t>(send_bytes));
    recv_stage_.resize(static_cast<size_t>(recv_bytes));
    cuda::copy_to_host(stage_.data(), send, send_bytes);
    host_->all_to_all_v(stage_.data(), send_rows, recv_stage_.data(), recv_rows, row_bytes, Stream::host());
    cuda::copy_from_host(recv, recv_stage_.data(), recv_bytes);
  }

  // Stages the rows from the first to past the last block of each side. When the receive blocks leave
  // rows between them uncovered, recv's range is staged in first, so those rows come back unchanged.
  void all_to_all_blocks(const void* send, const RowBlocks& send_blocks, void* recv, const RowBlocks& recv_blocks,
                         int64_t row_bytes, const Stream& stream) override {
    require_device_stream("all_to_all_blocks", stream);
    detail::check_row_blocks("mpi-staged all_to_all_blocks", send_blocks, recv_blocks, size());
    if (row_bytes < 0)
      throw CommError(detail::concat("mpi-staged all_to_all_blocks: row_bytes = ", row_bytes, " must be >= 0"));
    const int64_t send_bytes = send_blocks.end_row() * row_bytes;
    const int64_t recv_bytes = recv_blocks.end_row() * row_bytes;
    stage_.resize(static_cast<size_t>(send_bytes));
    recv_stage_.resize(static_cast<size_t>(recv_bytes));
    cuda::copy_to_host(stage_.data(), send, send_bytes);
    if (recv_blocks.total_rows() < recv_blocks.end_row()) cuda::copy_to_host(recv_stage_.data(), recv, recv_bytes);
    host_->all_to_all_blocks(stage_.data(), send_blocks, recv_stage_.data(), recv_blocks, row_bytes, Stream::host());
    cuda::copy_from_host(recv, recv_stage_.data(), recv_bytes);
  }

  std::unique_ptr<CommRequest> start_all_reduce(void* data, int64_t count, ScalarType type, ReduceOp op,
                                                const Stream& stream) override {
    all_reduce(data, count, type, op, stream);
    return std::make_unique<DoneRequest>();
  }

  std::unique_ptr<CommRequest> start_all_to_all_v(const void* send, const int64_t* send_rows, void* recv,
                                                  const int64_t* recv_rows, int64_t row_bytes,
                                                  const Stream& stream) override {
    all_to_all_v(send, send_rows, recv, recv_rows, row_bytes, stream);
    return std::make_unique<DoneRequest>();
  }

  void all_to_all(const void* send, void* recv, int64_t block_bytes) override {
    host_->all_to_all(send, recv, block_bytes);
  }
  void all_gather(const void* send, void* recv, int64_t bytes) override { host_->all_gather(send, recv, bytes); }
  void broadcast(void* data, int64_t bytes, int root) override { host_->broadcast(data, bytes, root); }
  void barrier() override { host_->barrier(); }

 private:
  static void require_device_stream(const char* op, const Stream& stream) {
    if (stream.device != Device::CUDA)
      throw CommError(detail::concat("mpi-staged ", op, ": this communicator moves GPU buffers and takes a CUDA "
                                     "stream; host tensors go through the host communicator"));
  }

  std::unique_ptr<Communicator> host_;
  std::vector<unsigned char> stage_, recv_stage_;  // host copies, kept between calls
};

}  // namespace

std::unique_ptr<Communicator> make_staged_communicator(std::unique_ptr<Communicator> host) {
  return std::make_unique<StagedCommunicator>(std::move(host));
}

}  // namespace moe

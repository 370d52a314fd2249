// The single-process communicator: rank 0 of 1, where every collective is a copy or nothing.
#include <cstring>
#include <memory>

#include "core/check.h"
#include "parallel/communicator.h"

namespace moe {
namespace {

// memcpy with null pointers is undefined even for zero bytes, and empty buffers may be null.
void copy_bytes(void* dst, const void* src, int64_t bytes) {
  if (bytes < 0) throw CommError(detail::concat("local communicator: negative byte count ", bytes));
  if (bytes == 0) return;
  if (dst == nullptr || src == nullptr)
    throw CommError(detail::concat("local communicator: null buffer for a copy of ", bytes, " bytes"));
  if (dst != src) std::memmove(dst, src, static_cast<size_t>(bytes));
}

class LocalCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  const char* backend() const override { return "local"; }

  std::unique_ptr<Communicator> split(int color, int key) const override {
    return std::make_unique<LocalCommunicator>();
  }

  void all_reduce(void* data, int64_t count, ScalarType type, ReduceOp op, const Stream& stream) override {
    detail::require_host_stream("local", "all_reduce", stream);
    if (count < 0) throw CommError(detail::concat("local all_reduce: negative count ", count));
  }

  void all_to_all(const void* send, void* recv, int64_t block_bytes) override {
    copy_bytes(recv, send, block_bytes);
  }

  void all_to_all_v(const void* send, const int64_t* send_rows, void* recv, const int64_t* recv_rows,
                    int64_t row_bytes, const Stream& stream) override {
    detail::require_host_stream("local", "all_to_all_v", stream);
    if (send_rows == nullptr || recv_rows == nullptr)
      throw CommError("local all_to_all_v: send_rows and recv_rows must not be null");
    if (send_rows[0] != recv_rows[0])
      throw CommError(detail::concat("local all_to_all_v: send_rows[0] = ", send_rows[0],
                                     " must equal recv_rows[0] = ", recv_rows[0], " on a single rank"));
    if (send_rows[0] < 0 || row_bytes < 0)
      throw CommError(detail::concat("local all_to_all_v: rows = ", send_rows[0], " and row_bytes = ", row_bytes,
                                     " must be >= 0"));
    copy_bytes(recv, send, send_rows[0] * row_bytes);
  }

  void all_to_all_blocks(const void* send, const RowBlocks& send_blocks, void* recv, const RowBlocks& recv_blocks,
                         int64_t row_bytes, const Stream& stream) override {
    detail::require_host_stream("local", "all_to_all_blocks", stream);
    detail::check_row_blocks("local all_to_all_blocks", send_blocks, recv_blocks, 1);
    if (row_bytes < 0)
      throw CommError(detail::concat("local all_to_all_blocks: row_bytes = ", row_bytes, " must be >= 0"));
    if (send_blocks.rows != recv_blocks.rows)
      throw CommError("local all_to_all_blocks: on a single rank each block has as many rows to receive as to send");
    if ((send == nullptr || recv == nullptr) && send_blocks.total_rows() > 0)
      throw CommError("local all_to_all_blocks: null buffer with rows to copy");
    const auto* from = static_cast<const char*>(send);
    auto* to = static_cast<char*>(recv);
    for (int64_t b = 0; b < send_blocks.blocks_per_peer; ++b)
      if (send_blocks.rows[b] > 0)  // an empty block's offset may lie past a null buffer
        copy_bytes(to + recv_blocks.offset[b] * row_bytes, from + send_blocks.offset[b] * row_bytes,
                   send_blocks.rows[b] * row_bytes);
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

  void all_gather(const void* send, void* recv, int64_t bytes) override { copy_bytes(recv, send, bytes); }

  void broadcast(void* data, int64_t bytes, int root) override {
    if (root != 0) throw CommError(detail::concat("local broadcast: root = ", root, " must be 0 (size 1)"));
    if (bytes < 0) throw CommError(detail::concat("local broadcast: negative byte count ", bytes));
  }

  void barrier() override {}
};

}  // namespace

std::unique_ptr<Communicator> make_local_communicator() { return std::make_unique<LocalCommunicator>(); }

}  // namespace moe

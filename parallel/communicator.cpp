// The tensor forms of the collectives (parallel/communicator.h).
#include "parallel/communicator.h"

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <utility>

#include "core/check.h"

namespace moe {

namespace {

void require_on_stream(const char* op, const char* arg, const Tensor& t, const Stream& stream) {
  MOE_REQUIRE(t.defined() && t.device() == stream.device, op, ": ", arg, " is a ", to_string(t.device()),
              " tensor, but the collective runs in a ", to_string(stream.device), " stream");
}

ScalarType reduce_type(const Tensor& data, const Stream& stream) {
  require_on_stream("all_reduce", "data", data, stream);
  MOE_REQUIRE(data.dtype() == DType::F32 || data.dtype() == DType::I32, "all_reduce: data has dtype ",
              to_string(data.dtype()), "; accepted: float32, int32");
  return data.dtype() == DType::F32 ? ScalarType::F32 : ScalarType::I32;
}

// Row width in bytes of send and recv, checked to be rows of the same width and dtype.
int64_t same_row_bytes(const char* op, const Tensor& send, const Tensor& recv) {
  MOE_REQUIRE(send.rank() >= 1 && recv.rank() >= 1 && send.dtype() == recv.dtype() &&
                  send.numel() * recv.dim(0) == recv.numel() * send.dim(0),
              op, ": send ", to_string(send.shape()), " and recv ", to_string(recv.shape()),
              " must be rows of the same width and dtype");
  const int64_t row_elems =
      send.dim(0) > 0 ? send.numel() / send.dim(0) : (recv.dim(0) > 0 ? recv.numel() / recv.dim(0) : 0);
  return row_elems * dtype_size(send.dtype());
}

// Checks an all-to-all-v of rows and returns the bytes of one row.
int64_t row_bytes(const Communicator& comm, const Tensor& send, const std::vector<int64_t>& send_rows,
                  const Tensor& recv, const std::vector<int64_t>& recv_rows, const Stream& stream) {
  require_on_stream("all_to_all_v", "send", send, stream);
  require_on_stream("all_to_all_v", "recv", recv, stream);
  const int64_t bytes = same_row_bytes("all_to_all_v", send, recv);
  const auto size = static_cast<size_t>(comm.size());
  MOE_REQUIRE(send_rows.size() == size && recv_rows.size() == size, "all_to_all_v: ", send_rows.size(), " and ",
              recv_rows.size(), " row counts for ", size, " ranks");
  MOE_REQUIRE(std::accumulate(send_rows.begin(), send_rows.end(), int64_t{0}) == send.dim(0) &&
                  std::accumulate(recv_rows.begin(), recv_rows.end(), int64_t{0}) == recv.dim(0),
              "all_to_all_v: the row counts do not add up to the rows of send ", to_string(send.shape()),
              " and recv ", to_string(recv.shape()));
  return bytes;
}

}  // namespace

int64_t RowBlocks::peer_rows(int peer) const {
  const auto first = rows.begin() + peer * blocks_per_peer;
  return std::accumulate(first, first + blocks_per_peer, int64_t{0});
}

int64_t RowBlocks::total_rows() const { return std::accumulate(rows.begin(), rows.end(), int64_t{0}); }

int64_t RowBlocks::end_row() const {
  int64_t end = 0;
  for (size_t i = 0; i < rows.size(); ++i)
    if (rows[i] > 0) end = std::max(end, offset[i] + rows[i]);
  return end;
}

int64_t scalar_bytes(ScalarType type) {
  switch (type) {
    case ScalarType::F32: return 4;
    case ScalarType::F64: return 8;
    case ScalarType::I32: return 4;
    case ScalarType::I64: return 8;
  }
  throw CommError(detail::concat("unknown ScalarType ", static_cast<int>(type)));
}

void all_reduce(Communicator& comm, Tensor& data, const Stream& stream, ReduceOp op) {
  const ScalarType type = reduce_type(data, stream);
  comm.all_reduce(data.data(), data.numel(), type, op, stream);
}

std::unique_ptr<CommRequest> start_all_reduce(Communicator& comm, Tensor& data, const Stream& stream, ReduceOp op) {
  const ScalarType type = reduce_type(data, stream);
  return comm.start_all_reduce(data.data(), data.numel(), type, op, stream);
}

void all_to_all_v(Communicator& comm, const Tensor& send, const std::vector<int64_t>& send_rows, Tensor& recv,
                  const std::vector<int64_t>& recv_rows, const Stream& stream) {
  const int64_t bytes = row_bytes(comm, send, send_rows, recv, recv_rows, stream);
  comm.all_to_all_v(send.data(), send_rows.data(), recv.data(), recv_rows.data(), bytes, stream);
}

std::unique_ptr<CommRequest> start_all_to_all_v(Communicator& comm, const Tensor& send,
                                                const std::vector<int64_t>& send_rows, Tensor& recv,
                                                const std::vector<int64_t>& recv_rows, const Stream& stream) {
  const int64_t bytes = row_bytes(comm, send, send_rows, recv, recv_rows, stream);
  return comm.start_all_to_all_v(send.data(), send_rows.data(), recv.data(), recv_rows.data(), bytes, stream);
}

void all_to_all_blocks(Communicator& comm, const Tensor& send, const RowBlocks& send_blocks, Tensor& recv,
                       const RowBlocks& recv_blocks, const Stream& stream) {
  require_on_stream("all_to_all_blocks", "send", send, stream);
  require_on_stream("all_to_all_blocks", "recv", recv, stream);
  const int64_t bytes = same_row_bytes("all_to_all_blocks", send, recv);
  detail::check_row_blocks("all_to_all_blocks", send_blocks, recv_blocks, comm.size());
  MOE_REQUIRE(send_blocks.end_row() <= send.dim(0) && recv_blocks.end_row() <= recv.dim(0),
              "all_to_all_blocks: the blocks end at row ", send_blocks.end_row(), " of send ",
              to_string(send.shape()), " and row ", recv_blocks.end_row(), " of recv ", to_string(recv.shape()),
              "; they must lie within the tensors' rows");
  comm.all_to_all_blocks(send.data(), send_blocks, recv.data(), recv_blocks, bytes, stream);
}

std::string first_error(Communicator& comm, const std::string& error) {
  const int first = all_reduce_value(comm, error.empty() ? comm.size() : comm.rank(), ReduceOp::Min);
  if (first == comm.size()) return "";
  int64_t length = comm.rank() == first ? static_cast<int64_t>(error.size()) : 0;
  comm.broadcast(&length, sizeof length, first);
  std::string message(static_cast<size_t>(length), '\0');
  if (comm.rank() == first) message = error;
  comm.broadcast(message.data(), length, first);
  return message;
}

void throw_if_any_rank_failed(Communicator& comm, const std::string& error) {
  const std::string message = first_error(comm, error);
  if (!message.empty()) throw InvalidArgument(message);
}

namespace detail {
void check_row_blocks(const char* op, const RowBlocks& send_blocks, const RowBlocks& recv_blocks, int size) {
  const int64_t K = send_blocks.blocks_per_peer;
  if (K < 0 || recv_blocks.blocks_per_peer != K)
    throw CommError(concat(op, ": blocks_per_peer = ", K, " (send) and ",
                           recv_blocks.blocks_per_peer, " (recv) must be equal and >= 0"));
  for (const auto& [blocks, side] : {std::pair{&send_blocks, "send_blocks"}, std::pair{&recv_blocks, "recv_blocks"}}) {
    if (blocks->offset.size() != static_cast<size_t>(size * K) || blocks->rows.size() != static_cast<size_t>(size * K))
      throw CommError(concat(op, ": ", side, " has ", blocks->offset.size(), " offsets and ",
                             blocks->rows.size(), " counts; ", size, " ranks x ", K, " blocks need ", size * K));
    for (size_t i = 0; i < blocks->rows.size(); ++i)
      if (blocks->offset[i] < 0 || blocks->rows[i] < 0 || blocks->rows[i] > INT64_MAX - blocks->offset[i])
        throw CommError(concat(op, ": ", side, " block ", i, " (peer ", i / K, ") has offset ", blocks->offset[i],
                               " and ", blocks->rows[i], " rows; both must be >= 0, their sum an int64"));
  }
}

void require_host_stream(const char* backend, const char* op, const Stream& stream) {
  if (stream.device != Device::CPU || stream.handle != nullptr)
    throw CommError(concat(backend, " ", op, ": this communicator runs on the host, in program order; it takes the "
                           "host stream, not a ", to_string(stream.device), " stream"));
}
}  // namespace detail

}  // namespace moe

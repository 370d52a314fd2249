// The communicator interface: the collectives the training step needs, hiding MPI and NCCL
// behind one set of calls. A single-process implementation serves unit tests and one-rank runs.
//
// Every call is collective over the communicator unless it says otherwise: all ranks make the same
// calls in the same order with matching sizes. Failures of the underlying library throw CommError
// naming file:line, the rank and the library's message. Not thread-safe: one thread per rank calls.
//
// Streams: the collectives that move data (all_reduce, all_to_all_v, all_to_all_blocks and the start_*
// forms) take the Stream (core/stream.h) they run in. The MPI and local communicators are host
// communicators: their buffers are host memory, they take only the host stream (another throws
// CommError) and run each collective in host program order (a blocking call has finished when it
// returns, a started one when its request's wait() returns). A device communicator (NCCL) enqueues on
// the stream.
// The other calls (all_to_all, all_gather, broadcast, barrier) are host calls on host memory: the
// control traffic of counts, flags and strings.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/stream.h"
#include "core/tensor.h"

namespace moe {

class CommError : public std::runtime_error {
 public:
  explicit CommError(const std::string& what) : std::runtime_error(what) {}
};

enum class ScalarType { F32, F64, I32, I64 };
enum class ReduceOp { Sum, Max, Min };
int64_t scalar_bytes(ScalarType type);  // 4 or 8

// A collective started by a start_* call and not yet finished. Until wait() returns, its buffers must
// be neither read nor written (the row counts are copied at the start). Destroying a pending request
// waits for it first. wait() throws CommError as the blocking call would.
class CommRequest {
 public:
  virtual ~CommRequest() = default;
  virtual void wait() = 0;
};

// A request for a collective that finished before its start_* call returned.
class DoneRequest final : public CommRequest {
 public:
  void wait() override {}
};

// Where the rows of an all_to_all_blocks call sit in one buffer, per rank j of the communicator:
// blocks_per_peer blocks, block b of peer j being rows[j * blocks_per_peer + b] rows from row
// offset[j * blocks_per_peer + b] (offsets in rows of that buffer, in any order; blocks may be empty).
struct RowBlocks {
  int64_t blocks_per_peer = 0;
  std::vector<int64_t> offset;  // (size * blocks_per_peer)
  std::vector<int64_t> rows;    // (size * blocks_per_peer)

  int64_t peer_rows(int peer) const;  // the rows of peer's blocks together
  int64_t total_rows() const;         // the rows of all blocks together
  int64_t end_row() const;            // one past the last row of a non-empty block (0: none)
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // A short name for logs and errors: "mpi", "nccl", "local".
  virtual const char* backend() const = 0;

  // Ranks passing the same color form a new communicator, ordered by key (ties: by rank here).
  virtual std::unique_ptr<Communicator> split(int color, int key) const = 0;

  // In place: data (count elements of type) becomes the reduction over all ranks.
  virtual void all_reduce(void* data, int64_t count, ScalarType type, ReduceOp op, const Stream& stream) = 0;

  // Rank i's send holds size() blocks of block_bytes, block j going to rank j; recv receives block i
  // of every rank j at position j. Used for exchanging counts.
  virtual void all_to_all(const void* send, void* recv, int64_t block_bytes) = 0;

  // Variable all-to-all of rows of row_bytes each, with no padding on the wire: send holds
  // send_rows[j] rows for rank j, peers in rank order, packed; recv gets recv_rows[j] rows from rank
  // j, packed in rank order. send_rows and recv_rows have size() entries and must agree pairwise
  // across ranks (recv_rows[j] on rank i == send_rows[i] on rank j).
  virtual void all_to_all_v(const void* send, const int64_t* send_rows, void* recv, const int64_t* recv_rows,
                            int64_t row_bytes, const Stream& stream) = 0;

  // All-to-all of rows of row_bytes each, gathered from and scattered into blocks of rows, so a caller
  // can send from one row order and receive straight into another with no copy around the call (the
  // expert exchange: dispatch order on one side, its experts' order on the other). Block b of peer j
  // in send_blocks travels to rank j and lands in block b of peer i (this rank) in rank j's
  // recv_blocks. Every rank passes the same blocks_per_peer on both sides, and the blocks agree
  // pairwise across ranks: send_blocks.rows[j * K + b] on rank i == recv_blocks.rows[i * K + b] on
  // rank j (unchecked, like all_to_all_v's counts). Receive blocks must not overlap; rows of recv
  // outside them are left as they are. Checked on each rank before the collective (CommError): the
  // arrays' sizes, counts and offsets >= 0, and what fits the backend's arguments.
  virtual void all_to_all_blocks(const void* send, const RowBlocks& send_blocks, void* recv,
                                 const RowBlocks& recv_blocks, int64_t row_bytes, const Stream& stream) = 0;

  // Non-blocking forms of all_reduce and all_to_all_v (MPI_Iallreduce, MPI_Ialltoallv), for overlapping
  // communication with compute: same contracts; the result is there once the request's wait() returns.
  // Every rank starts the same collectives in the same order.
  virtual std::unique_ptr<CommRequest> start_all_reduce(void* data, int64_t count, ScalarType type, ReduceOp op,
                                                        const Stream& stream) = 0;
  virtual std::unique_ptr<CommRequest> start_all_to_all_v(const void* send, const int64_t* send_rows, void* recv,
                                                          const int64_t* recv_rows, int64_t row_bytes,
                                                          const Stream& stream) = 0;

  // recv (size() * bytes) gets every rank's send (bytes), in rank order.
  virtual void all_gather(const void* send, void* recv, int64_t bytes) = 0;

  // data (bytes) on every rank becomes root's.
  virtual void broadcast(void* data, int64_t bytes, int root) = 0;

  virtual void barrier() = 0;
};

// Typed helpers for host memory (the host stream).
template <typename T>
constexpr ScalarType scalar_type_of();
template <>
constexpr ScalarType scalar_type_of<float>() { return ScalarType::F32; }
template <>
constexpr ScalarType scalar_type_of<double>() { return ScalarType::F64; }
template <>
constexpr ScalarType scalar_type_of<int32_t>() { return ScalarType::I32; }
template <>
constexpr ScalarType scalar_type_of<int64_t>() { return ScalarType::I64; }

template <typename T>
void all_reduce(Communicator& comm, T* data, int64_t count, ReduceOp op = ReduceOp::Sum) {
  comm.all_reduce(data, count, scalar_type_of<T>(), op, Stream::host());
}

template <typename T>
T all_reduce_value(Communicator& comm, T value, ReduceOp op = ReduceOp::Sum) {
  comm.all_reduce(&value, 1, scalar_type_of<T>(), op, Stream::host());
  return value;
}

// Tensor forms, run in `stream`: every tensor must be on the stream's device (host tensors and the
// host stream for MPI and the local communicator), checked, with the shapes, before the collective
// starts (InvalidArgument).
//   all_reduce: in place over all ranks, float32 or int32.
void all_reduce(Communicator& comm, Tensor& data, const Stream& stream, ReduceOp op = ReduceOp::Sum);
std::unique_ptr<CommRequest> start_all_reduce(Communicator& comm, Tensor& data, const Stream& stream,
                                              ReduceOp op = ReduceOp::Sum);
//   all_to_all_v of dim-0 rows (any dtype): send (sum(send_rows), ...) -> recv (sum(recv_rows), ...).
void all_to_all_v(Communicator& comm, const Tensor& send, const std::vector<int64_t>& send_rows, Tensor& recv,
                  const std::vector<int64_t>& recv_rows, const Stream& stream);
std::unique_ptr<CommRequest> start_all_to_all_v(Communicator& comm, const Tensor& send,
                                                const std::vector<int64_t>& send_rows, Tensor& recv,
                                                const std::vector<int64_t>& recv_rows, const Stream& stream);

//   all_to_all_blocks of dim-0 rows (any dtype): every block within its tensor's rows.
void all_to_all_blocks(Communicator& comm, const Tensor& send, const RowBlocks& send_blocks, Tensor& recv,
                       const RowBlocks& recv_blocks, const Stream& stream);

namespace detail {
// For every all_to_all_blocks: throws CommError "<op>: ..." unless both layouts have the same
// blocks_per_peer >= 0 and size * blocks_per_peer offsets and counts, all >= 0.
void check_row_blocks(const char* op, const RowBlocks& send_blocks, const RowBlocks& recv_blocks, int size);
// For host communicators: throws CommError "<backend> <op>: ... host stream" unless stream is the host's.
void require_host_stream(const char* backend, const char* op, const Stream& stream);
}  // namespace detail

// Reduces several arrays with one all-reduce: packs `parts` (each a span of the caller's memory) into
// one buffer, reduces it, and writes each part back in place. Collective over comm.
template <typename T>
void all_reduce_packed(Communicator& comm, const std::vector<std::span<T>>& parts, ReduceOp op = ReduceOp::Sum) {
  std::vector<T> packed;
  for (std::span<T> part : parts) packed.insert(packed.end(), part.begin(), part.end());
  all_reduce(comm, packed.data(), static_cast<int64_t>(packed.size()), op);
  auto from = packed.begin();
  for (std::span<T> part : parts) {
    std::copy(from, from + static_cast<std::ptrdiff_t>(part.size()), part.begin());
    from += static_cast<std::ptrdiff_t>(part.size());
  }
}

// Collective over comm (host values). The lowest rank's non-empty `error`, on every rank; "" when
// every rank's is empty.
std::string first_error(Communicator& comm, const std::string& error);

// Collective over comm (host values). If any rank's `error` is non-empty, throws InvalidArgument on
// every rank with the lowest such rank's message: a failure only some ranks see (a damaged tensor that
// only they read, a missing GPU) then ends every rank alike, with the message where rank 0 prints it,
// instead of leaving the others waiting in their next collective.
void throw_if_any_rank_failed(Communicator& comm, const std::string& error);

// Appends each row of `table` to `parts`, for all_reduce_packed.
template <typename T>
void add_rows(std::vector<std::span<T>>& parts, std::vector<std::vector<T>>& table) {
  for (std::vector<T>& row : table) parts.emplace_back(row);
}

// The single-process communicator: size 1, every collective is a copy or nothing.
std::unique_ptr<Communicator> make_local_communicator();

}  // namespace moe

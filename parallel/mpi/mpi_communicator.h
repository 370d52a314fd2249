// The MPI implementation of Communicator, the MPI_CHECK macro, and the MpiSession that brackets
// MPI_Init_thread / MPI_Finalize for a program's lifetime.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <map>
#include <memory>

#include "parallel/communicator.h"

namespace moe {

namespace detail {
// Throws CommError "file:line: <call> failed on rank R: <MPI_Error_string(code)>", where R is the
// rank in MPI_COMM_WORLD ("?" when MPI is not initialised or already finalised).
[[noreturn]] void throw_mpi_error(int code, const char* call, const char* file, int line);
}  // namespace detail

// Owns MPI for the program: the constructor calls MPI_Init_thread(MPI_THREAD_FUNNELED) unless MPI is
// already initialised, and sets MPI_ERRORS_RETURN on MPI_COMM_WORLD so failures come back as codes
// (and, through MPI_CHECK, as CommError). The destructor calls MPI_Finalize unless MPI is already
// finalised or this session did not initialise it. Create one, in main(), before any communicator;
// only the thread that created it may make MPI calls.
class MpiSession {
 public:
  // argc/argv may be null (MPI then gets no command line).
  explicit MpiSession(int* argc = nullptr, char*** argv = nullptr);
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

 private:
  bool owns_ = false;  // true when this session called MPI_Init_thread, so it finalises
};

// Aborts every rank of MPI_COMM_WORLD with the exit code. For an error that only one rank sees: the
// others would otherwise wait forever in their next collective. Without MPI initialised, exits.
[[noreturn]] void mpi_abort(int code);

// A Communicator over an MPI_Comm it owns (MPI_ERRORS_RETURN set on it). Counts are checked to fit
// MPI's int arguments; a count that does not fit throws CommError before any MPI call. Errors found
// before the MPI call (bad arguments) throw on the ranks that see them only: if they can differ
// across ranks, the caller must mpi_abort rather than let the other ranks wait.
class MpiCommunicator final : public Communicator {
 public:
  // Takes ownership of comm (not MPI_COMM_NULL, not MPI_COMM_WORLD itself).
  explicit MpiCommunicator(MPI_Comm comm);
  // Frees the cached row datatypes and the MPI_Comm, unless MPI is already finalised.
  ~MpiCommunicator() override;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const char* backend() const override { return "mpi"; }
  // For comparisons with bare MPI calls (benchmarks); still owned by this object.
  MPI_Comm handle() const { return comm_; }

  std::unique_ptr<Communicator> split(int color, int key) const override;
  void all_reduce(void* data, int64_t count, ScalarType type, ReduceOp op, const Stream& stream) override;
  void all_to_all(const void* send, void* recv, int64_t block_bytes) override;
  void all_to_all_v(const void* send, const int64_t* send_rows, void* recv, const int64_t* recv_rows,
                    int64_t row_bytes, const Stream& stream) override;
  // MPI_Alltoallw with one datatype per peer built from its blocks, made and freed per call (about a
  // microsecond for both sides here: not worth a cache).
  void all_to_all_blocks(const void* send, const RowBlocks& send_blocks, void* recv, const RowBlocks& recv_blocks,
                         int64_t row_bytes, const Stream& stream) override;
  std::unique_ptr<CommRequest> start_all_reduce(void* data, int64_t count, ScalarType type, ReduceOp op,
                                                const Stream& stream) override;
  std::unique_ptr<CommRequest> start_all_to_all_v(const void* send, const int64_t* send_rows, void* recv,
                                                  const int64_t* recv_rows, int64_t row_bytes,
                                                  const Stream& stream) override;
  void all_gather(const void* send, void* recv, int64_t bytes) override;
  void broadcast(void* data, int64_t bytes, int root) override;
  void barrier() override;

 private:
  // A committed contiguous datatype of row_bytes bytes, created on first use and kept.
  MPI_Datatype row_type(int64_t row_bytes);
  struct RowCounts;
  RowCounts row_counts(const void* send, const int64_t* send_rows, const void* recv, const int64_t* recv_rows,
                       int64_t row_bytes) const;

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 0;
  std::map<int64_t, MPI_Datatype> row_types_;
};

// A communicator over a duplicate of MPI_COMM_WORLD (so its traffic never mixes with other users of
// the world). Requires a live MpiSession; throws CommError otherwise. Collective over the world.
// The communicator frees its MPI_Comm when destroyed, unless MPI is already finalised by then.
std::unique_ptr<Communicator> make_mpi_world_communicator();

}  // namespace moe

// Wraps an MPI call returning an error code: anything but MPI_SUCCESS throws moe::CommError naming
// the call, file:line, the world rank and MPI's message. Needs MPI_ERRORS_RETURN on the communicator
// involved (MpiSession and MpiCommunicator set it), or MPI aborts before the code comes back.
#define MPI_CHECK(call)                                                    \
  do {                                                                     \
    const int moe_mpi_rc_ = (call);                                        \
    if (moe_mpi_rc_ != MPI_SUCCESS)                                        \
      ::moe::detail::throw_mpi_error(moe_mpi_rc_, #call, __FILE__, __LINE__); \
  } while (0)

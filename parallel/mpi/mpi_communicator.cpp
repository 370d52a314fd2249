// The MPI communicator: each collective maps to one MPI call (chunked where a byte count can exceed
// MPI's int), with every return code checked by MPI_CHECK.
#include "parallel/mpi/mpi_communicator.h"

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/check.h"

namespace moe {

namespace detail {

[[noreturn]] void throw_mpi_error(int code, const char* call, const char* file, int line) {
  std::string rank = "?";
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) {
    int r = -1;
    if (MPI_Comm_rank(MPI_COMM_WORLD, &r) == MPI_SUCCESS) rank = std::to_string(r);
  }
  char message[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  if (MPI_Error_string(code, message, &length) != MPI_SUCCESS) {
    throw CommError(concat(file, ":", line, ": ", call, " failed on rank ", rank, ": MPI error code ", code));
  }
  throw CommError(concat(file, ":", line, ": ", call, " failed on rank ", rank, ": ", std::string(message, length)));
}

}  // namespace detail

namespace {

bool mpi_is_live() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  return initialized && !finalized;
}

// MPI takes counts as int: anything larger (or negative) is rejected before the call. index >= 0
// names the peer the count belongs to.
int to_int_count(int64_t value, const char* op, const char* what, int index = -1) {
  if (value < 0 || value > INT_MAX) {
    const std::string where = index >= 0 ? detail::concat("[", index, "]") : std::string();
    throw CommError(detail::concat("mpi ", op, ": ", what, where, " = ", value, " must be in [0, ", INT_MAX,
                                   "] (MPI counts are int)"));
  }
  return static_cast<int>(value);
}

// Stands in for a null buffer when nothing is sent or received: MPI implementations may reject null
// even with zero counts. Never read or written.
char g_dummy_buffer[1];
const void* or_dummy(const void* p) { return p != nullptr ? p : g_dummy_buffer; }
void* or_dummy(void* p) { return p != nullptr ? p : g_dummy_buffer; }

MPI_Datatype mpi_type(ScalarType type) {
  switch (type) {
    case ScalarType::F32: return MPI_FLOAT;
    case ScalarType::F64: return MPI_DOUBLE;
    case ScalarType::I32: return MPI_INT32_T;
    case ScalarType::I64: return MPI_INT64_T;
  }
  throw CommError(detail::concat("mpi all_reduce: unknown ScalarType ", static_cast<int>(type)));
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return MPI_SUM;
    case ReduceOp::Max: return MPI_MAX;
    case ReduceOp::Min: return MPI_MIN;
  }
  throw CommError(detail::concat("mpi all_reduce: unknown ReduceOp ", static_cast<int>(op)));
}

}  // namespace

MpiSession::MpiSession(int* argc, char*** argv) {
  int initialized = 0, finalized = 0;
  MPI_CHECK(MPI_Initialized(&initialized));
  MPI_CHECK(MPI_Finalized(&finalized));
  if (finalized) throw CommError("MpiSession: MPI was already finalised; it cannot be initialised again");
  if (!initialized) {
    // FUNNELED: OpenMP threads exist, but only the thread that created the session calls MPI.
    int provided = 0;
    MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided));
    owns_ = true;
  }
  MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
}

MpiSession::~MpiSession() {
  if (!owns_) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();  // a destructor cannot throw: the return code is ignored
}

[[noreturn]] void mpi_abort(int code) {
  if (mpi_is_live()) MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);  // MPI_Abort does not return; this covers a program without MPI running
}

MpiCommunicator::MpiCommunicator(MPI_Comm comm) : comm_(comm) {
  MOE_ASSERT(comm != MPI_COMM_NULL && comm != MPI_COMM_WORLD, "MpiCommunicator owns and frees its comm");
  try {
    MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
    MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
    MPI_CHECK(MPI_Comm_size(comm_, &size_));
  } catch (...) {
    MPI_Comm_free(&comm_);
    throw;
  }
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;  // everything MPI held is gone already
  for (auto& [bytes, type] : row_types_) MPI_Type_free(&type);
  MPI_Comm_free(&comm_);
}

std::unique_ptr<Communicator> MpiCommunicator::split(int color, int key) const {
  if (color < 0) throw CommError(detail::concat("mpi split: color = ", color, " must be >= 0"));
  MPI_Comm sub = MPI_COMM_NULL;
  MPI_CHECK(MPI_Comm_split(comm_, color, key, &sub));
  return std::make_unique<MpiCommunicator>(sub);
}

void MpiCommunicator::all_reduce(void* data, int64_t count, ScalarType type, ReduceOp op, const Stream& stream) {
  detail::require_host_stream("mpi", "all_reduce", stream);
  if (count < 0) throw CommError(detail::concat("mpi all_reduce: count = ", count, " must be >= 0"));
  const MPI_Datatype dt = mpi_type(type);
  const MPI_Op mop = mpi_op(op);
  const int64_t elem_bytes = scalar_bytes(type);
  // Chunks of at most INT_MAX elements; the same sequence of calls on every rank.
  for (int64_t offset = 0; offset < count; offset += INT_MAX) {
    const int n = static_cast<int>(std::min<int64_t>(INT_MAX, count - offset));
    char* chunk = static_cast<char*>(data) + offset * elem_bytes;
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, chunk, n, dt, mop, comm_));
  }
}

void MpiCommunicator::all_to_all(const void* send, void* recv, int64_t block_bytes) {
  const int n = to_int_count(block_bytes, "all_to_all", "block_bytes");
  MPI_CHECK(MPI_Alltoall(or_dummy(send), n, MPI_BYTE, or_dummy(recv), n, MPI_BYTE, comm_));
}

MPI_Datatype MpiCommunicator::row_type(int64_t row_bytes) {
  auto it = row_types_.find(row_bytes);
  if (it != row_types_.end()) return it->second;
  const int n = to_int_count(row_bytes, "all_to_all_v", "row_bytes");
  MPI_Datatype type = MPI_DATATYPE_NULL;
  MPI_CHECK(MPI_Type_contiguous(n, MPI_BYTE, &type));
  MPI_CHECK(MPI_Type_commit(&type));
  row_types_.emplace(row_bytes, type);
  return type;
}

// The row counts and displacements of an all-to-all-v, in rows (units of the row datatype);
// displacements are prefix sums. Checked before any MPI call.
struct MpiCommunicator::RowCounts {
  std::vector<int> send_counts, send_displs, recv_counts, recv_displs;
};

MpiCommunicator::RowCounts MpiCommunicator::row_counts(const void* send, const int64_t* send_rows, const void* recv,
                                                       const int64_t* recv_rows, int64_t row_bytes) const {
  if (send_rows == nullptr || recv_rows == nullptr)
    throw CommError("mpi all_to_all_v: send_rows and recv_rows must not be null");
  if (row_bytes < 0) throw CommError(detail::concat("mpi all_to_all_v: row_bytes = ", row_bytes, " must be >= 0"));
  RowCounts c{std::vector<int>(size_), std::vector<int>(size_), std::vector<int>(size_), std::vector<int>(size_)};
  int64_t send_total = 0, recv_total = 0;
  for (int j = 0; j < size_; ++j) {
    c.send_counts[j] = to_int_count(send_rows[j], "all_to_all_v", "send_rows", j);
    c.recv_counts[j] = to_int_count(recv_rows[j], "all_to_all_v", "recv_rows", j);
    c.send_displs[j] = to_int_count(send_total, "all_to_all_v", "send row offset of peer", j);
    c.recv_displs[j] = to_int_count(recv_total, "all_to_all_v", "recv row offset of peer", j);
    send_total += send_rows[j];
    recv_total += recv_rows[j];
  }
  if ((send == nullptr && send_total > 0) || (recv == nullptr && recv_total > 0))
    throw CommError(detail::concat("mpi all_to_all_v: null buffer with ", send_total, " rows to send and ",
                                   recv_total, " rows to receive"));
  return c;
}

void MpiCommunicator::all_to_all_v(const void* send, const int64_t* send_rows, void* recv, const int64_t* recv_rows,
                                   int64_t row_bytes, const Stream& stream) {
  detail::require_host_stream("mpi", "all_to_all_v", stream);
  const RowCounts c = row_counts(send, send_rows, recv, recv_rows, row_bytes);
  if (row_bytes == 0) return;  // rows of nothing: row_bytes is the same on every rank, so all return
  const MPI_Datatype type = row_type(row_bytes);
  MPI_CHECK(MPI_Alltoallv(or_dummy(send), c.send_counts.data(), c.send_displs.data(), type, or_dummy(recv),
                          c.recv_counts.data(), c.recv_displs.data(), type, comm_));
}

namespace {

// The MPI_Alltoallw arguments of one side of an all_to_all_blocks: per peer, its non-empty blocks as
// one hindexed datatype of rows (lengths in rows, MPI ints; displacements in bytes, MPI_Aint), sent
// or received once at byte displacement 0; a peer with no rows gets count 0. The types made here are
// freed with this object.
struct PeerBlockTypes {
  std::vector<int> counts, displs;
  std::vector<MPI_Datatype> types;
  std::vector<MPI_Datatype> owned;

  PeerBlockTypes(const RowBlocks& blocks, int size, MPI_Datatype row, int64_t row_bytes, const char* side)
      : counts(size, 0), displs(size, 0), types(size, row) {
    const int64_t K = blocks.blocks_per_peer;
    std::vector<int> lengths;
    std::vector<MPI_Aint> bytes_at;
    for (int j = 0; j < size; ++j) {
      lengths.clear();
      bytes_at.clear();
      for (int64_t i = j * K; i < (j + 1) * K; ++i) {
        if (blocks.rows[i] == 0) continue;
        lengths.push_back(to_int_count(blocks.rows[i], "all_to_all_blocks", side, static_cast<int>(i)));
        int64_t at = 0;
        if (__builtin_mul_overflow(blocks.offset[i], row_bytes, &at))
          throw CommError(detail::concat("mpi all_to_all_blocks: ", side, " block ", i, " starts at row ",
                                         blocks.offset[i], " of ", row_bytes, " bytes: past any byte address"));
        bytes_at.push_back(static_cast<MPI_Aint>(at));
      }
      if (lengths.empty()) continue;
      MPI_Datatype type = MPI_DATATYPE_NULL;
      const int n = static_cast<int>(lengths.size());
      MPI_CHECK(MPI_Type_create_hindexed(n, lengths.data(), bytes_at.data(), row, &type));
      owned.push_back(type);
      MPI_CHECK(MPI_Type_commit(&owned.back()));
      types[j] = owned.back();
      counts[j] = 1;
    }
  }
  ~PeerBlockTypes() {
    for (MPI_Datatype& type : owned) MPI_Type_free(&type);
  }
  PeerBlockTypes(const PeerBlockTypes&) = delete;
  PeerBlockTypes& operator=(const PeerBlockTypes&) = delete;
};

}  // namespace

void MpiCommunicator::all_to_all_blocks(const void* send, const RowBlocks& send_blocks, void* recv,
                                        const RowBlocks& recv_blocks, int64_t row_bytes, const Stream& stream) {
  detail::require_host_stream("mpi", "all_to_all_blocks", stream);
  detail::check_row_blocks("mpi all_to_all_blocks", send_blocks, recv_blocks, size_);
  if (row_bytes < 0) throw CommError(detail::concat("mpi all_to_all_blocks: row_bytes = ", row_bytes, " must be >= 0"));
  const int64_t send_total = send_blocks.total_rows(), recv_total = recv_blocks.total_rows();
  if ((send == nullptr && send_total > 0) || (recv == nullptr && recv_total > 0))
    throw CommError(detail::concat("mpi all_to_all_blocks: null buffer with ", send_total, " rows to send and ",
                                   recv_total, " rows to receive"));
  if (row_bytes == 0) return;  // rows of nothing: row_bytes is the same on every rank, so all return
  const MPI_Datatype row = row_type(row_bytes);
  const PeerBlockTypes to(send_blocks, size_, row, row_bytes, "send_blocks.rows");
  const PeerBlockTypes from(recv_blocks, size_, row, row_bytes, "recv_blocks.rows");
  MPI_CHECK(MPI_Alltoallw(or_dummy(send), to.counts.data(), to.displs.data(), to.types.data(), or_dummy(recv),
                          from.counts.data(), from.displs.data(), from.types.data(), comm_));
}

namespace {
// Pending MPI requests, with the count arrays MPI reads until they complete.
class MpiRequest final : public CommRequest {
 public:
  std::vector<MPI_Request> requests;
  std::vector<std::vector<int>> counts;  // kept alive for MPI_Ialltoallv

  ~MpiRequest() override {
    // A destructor cannot throw: a failure here was (or will be) reported by the blocking calls around it.
    if (!requests.empty()) MPI_Waitall(static_cast<int>(requests.size()), requests.data(), MPI_STATUSES_IGNORE);
  }
  void wait() override {
    if (requests.empty()) return;
    std::vector<MPI_Request> pending;
    pending.swap(requests);
    MPI_CHECK(MPI_Waitall(static_cast<int>(pending.size()), pending.data(), MPI_STATUSES_IGNORE));
  }
};
}  // namespace

std::unique_ptr<CommRequest> MpiCommunicator::start_all_reduce(void* data, int64_t count, ScalarType type,
                                                               ReduceOp op, const Stream& stream) {
  detail::require_host_stream("mpi", "start_all_reduce", stream);
  if (count < 0) throw CommError(detail::concat("mpi all_reduce: count = ", count, " must be >= 0"));
  const MPI_Datatype dt = mpi_type(type);
  const MPI_Op mop = mpi_op(op);
  const int64_t elem_bytes = scalar_bytes(type);
  auto request = std::make_unique<MpiRequest>();
  for (int64_t offset = 0; offset < count; offset += INT_MAX) {
    const int n = static_cast<int>(std::min<int64_t>(INT_MAX, count - offset));
    char* chunk = static_cast<char*>(data) + offset * elem_bytes;
    request->requests.emplace_back();
    MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, chunk, n, dt, mop, comm_, &request->requests.back()));
  }
  return request;
}

std::unique_ptr<CommRequest> MpiCommunicator::start_all_to_all_v(const void* send, const int64_t* send_rows,
                                                                 void* recv, const int64_t* recv_rows,
                                                                 int64_t row_bytes, const Stream& stream) {
  detail::require_host_stream("mpi", "start_all_to_all_v", stream);
  RowCounts c = row_counts(send, send_rows, recv, recv_rows, row_bytes);
  auto request = std::make_unique<MpiRequest>();
  if (row_bytes == 0) return request;
  const MPI_Datatype type = row_type(row_bytes);
  request->counts = {std::move(c.send_counts), std::move(c.send_displs), std::move(c.recv_counts),
                     std::move(c.recv_displs)};
  const auto& k = request->counts;
  request->requests.emplace_back();
  MPI_CHECK(MPI_Ialltoallv(or_dummy(send), k[0].data(), k[1].data(), type, or_dummy(recv), k[2].data(), k[3].data(),
                           type, comm_, &request->requests.back()));
  return request;
}

void MpiCommunicator::all_gather(const void* send, void* recv, int64_t bytes) {
  const int n = to_int_count(bytes, "all_gather", "bytes");
  MPI_CHECK(MPI_Allgather(or_dummy(send), n, MPI_BYTE, or_dummy(recv), n, MPI_BYTE, comm_));
}

void MpiCommunicator::broadcast(void* data, int64_t bytes, int root) {
  if (root < 0 || root >= size_)
    throw CommError(detail::concat("mpi broadcast: root = ", root, " must be in [0, ", size_, ")"));
  if (bytes < 0) throw CommError(detail::concat("mpi broadcast: bytes = ", bytes, " must be >= 0"));
  for (int64_t offset = 0; offset < bytes; offset += INT_MAX) {
    const int n = static_cast<int>(std::min<int64_t>(INT_MAX, bytes - offset));
    MPI_CHECK(MPI_Bcast(static_cast<char*>(data) + offset, n, MPI_BYTE, root, comm_));
  }
}

void MpiCommunicator::barrier() { MPI_CHECK(MPI_Barrier(comm_)); }

std::unique_ptr<Communicator> make_mpi_world_communicator() {
  if (!mpi_is_live())
    throw CommError("make_mpi_world_communicator: MPI is not running; create an MpiSession first (in main)");
  MPI_Comm comm = MPI_COMM_NULL;
  MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &comm));
  return std::make_unique<MpiCommunicator>(comm);
}

}  // namespace moe

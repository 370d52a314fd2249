// The NCCL data communicator (parallel/nccl/nccl_communicator.h): all-reduce, all-to-all-v and
// all-to-all of blocks enqueued with NCCL on the caller's CUDA stream; host calls delegated to the
// control communicator; a process-wide list of live communicators for abort_nccl_communicators.
#include "parallel/nccl/nccl_communicator.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/check.h"
#include "parallel/nccl/nccl_check.h"

namespace moe {

namespace detail {

[[noreturn]] void throw_nccl_error(ncclResult_t result, const char* call, const char* file, int line, int rank) {
  std::string message = concat(file, ":", line, ": ", call, " failed on rank ", rank, ": ", ncclGetErrorString(result));
  const char* last = ncclGetLastError(nullptr);  // NCCL keeps one last message (the comm argument is unused)
  if (last != nullptr && last[0] != '\0') message += concat(" (", last, ")");
  throw CommError(message);
}

[[noreturn]] void throw_cuda_error(cudaError_t code, const char* call, const char* file, int line, int rank) {
  throw CommError(concat(file, ":", line, ": ", call, " failed on rank ", rank, ": ", cudaGetErrorName(code), ": ",
                         cudaGetErrorString(code)));
}

}  // namespace detail

namespace {

using detail::concat;

// One NCCL communicator as this rank's calls and abort_nccl_communicators see it. `mutex` orders an
// abort (from another thread) with the rank's own polling of a request. The calls that can block (an
// enqueue while NCCL connects to a peer, the destructor's finalize) do not take it: an abort must be
// able to end the first, and the destructor leaves the list of live communicators before the second.
struct NcclHandle {
  ncclComm_t comm = nullptr;  // null once destroyed
  int rank = 0;
  std::mutex mutex;
  std::atomic<bool> aborted{false};
};

std::mutex g_live_mutex;
std::vector<NcclHandle*> g_live;  // every NcclCommunicator's handle, from its initialisation to its destruction

ncclDataType_t nccl_type(ScalarType type) {
  switch (type) {
    case ScalarType::F32: return ncclFloat32;
    case ScalarType::F64: return ncclFloat64;
    case ScalarType::I32: return ncclInt32;
    case ScalarType::I64: return ncclInt64;
  }
  throw CommError(concat("nccl all_reduce: unknown ScalarType ", static_cast<int>(type)));
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return ncclSum;
    case ReduceOp::Max: return ncclMax;
    case ReduceOp::Min: return ncclMin;
  }
  throw CommError(concat("nccl all_reduce: unknown ReduceOp ", static_cast<int>(op)));
}

// Throws CommError when the communicator was aborted, destroyed, or NCCL reports an asynchronous
// error (a failed peer, a network error) for it.
void require_healthy(NcclHandle& h, const char* op) {
  std::lock_guard<std::mutex> lock(h.mutex);
  if (h.aborted) throw CommError(concat("nccl ", op, ": rank ", h.rank, ": the communicator was aborted"));
  if (h.comm == nullptr)
    throw CommError(concat("nccl ", op, ": rank ", h.rank, ": the communicator was destroyed before this "
                           "request was waited for"));
  ncclResult_t async = ncclSuccess;
  NCCL_CHECK(h.rank, ncclCommGetAsyncError(h.comm, &async));
  if (async != ncclSuccess && async != ncclInProgress)
    detail::throw_nccl_error(async, concat("nccl ", op, " (an asynchronous error)").c_str(), __FILE__, __LINE__, h.rank);
}

// A started collective: an event recorded on its stream after it. wait() polls the event, checking
// NCCL's asynchronous errors and aborts in between, so a collective whose peer never comes ends with
// CommError once the communicator is aborted, instead of waiting forever in cudaEventSynchronize.
class NcclRequest final : public CommRequest {
 public:
  NcclRequest(std::shared_ptr<NcclHandle> handle, cudaStream_t stream, const char* op)
      : handle_(std::move(handle)), op_(op) {
    NCCL_CUDA_CHECK(handle_->rank, cudaEventCreateWithFlags(&event_, cudaEventDisableTiming));
    const cudaError_t recorded = cudaEventRecord(event_, stream);
    if (recorded != cudaSuccess) {
      cudaEventDestroy(event_);
      detail::throw_cuda_error(recorded, "cudaEventRecord(event_, stream)", __FILE__, __LINE__, handle_->rank);
    }
  }

  ~NcclRequest() override {
    try {
      wait();
    } catch (const CommError&) {
      // A destructor cannot throw: the failure was (or will be) reported by the calls around it.
    }
    cudaEventDestroy(event_);
  }

  void wait() override {
    if (done_) return;
    done_ = true;  // a failed wait is not repeated: the failure is the request's result
    while (true) {
      const cudaError_t state = cudaEventQuery(event_);
      if (state == cudaSuccess) return;
      if (state != cudaErrorNotReady)
        detail::throw_cuda_error(state, "cudaEventQuery(event_)", __FILE__, __LINE__, handle_->rank);
      require_healthy(*handle_, op_);
      std::this_thread::yield();
    }
  }

 private:
  std::shared_ptr<NcclHandle> handle_;
  const char* op_;
  cudaEvent_t event_ = nullptr;
  bool done_ = false;
};

// Byte offsets of the peers' blocks of an all-to-all-v: size + 1 prefix sums of rows[j] * row_bytes.
std::vector<int64_t> byte_offsets(const char* op, const char* what, const int64_t* rows, int size,
                                  int64_t row_bytes) {
  std::vector<int64_t> offsets(static_cast<size_t>(size) + 1, 0);
  for (int j = 0; j < size; ++j) {
    int64_t bytes = 0;
    if (rows[j] < 0 || __builtin_mul_overflow(rows[j], row_bytes, &bytes) ||
        __builtin_add_overflow(offsets[j], bytes, &offsets[j + 1]))
      throw CommError(concat("nccl ", op, ": ", what, "[", j, "] = ", rows[j], " rows of ", row_bytes,
                             " bytes: the count must be >= 0 and the bytes must fit in int64"));
  }
  return offsets;
}

// One ncclSend or ncclRecv of an all-to-all: `bytes` (> 0) at byte `at` of the buffer, to or from `peer`.
struct PeerBytes {
  int peer;
  int64_t at, bytes;
};

// The transfers of an all-to-all-v side: one per peer with rows.
std::vector<PeerBytes> peer_transfers(const char* op, const char* what, const int64_t* rows, int size,
                                      int64_t row_bytes) {
  const std::vector<int64_t> at = byte_offsets(op, what, rows, size, row_bytes);
  std::vector<PeerBytes> transfers;
  for (int j = 0; j < size; ++j)
    if (at[j + 1] > at[j]) transfers.push_back({j, at[j], at[j + 1] - at[j]});
  return transfers;
}

// The transfers of an all_to_all_blocks side: one per non-empty block, in block order per peer.
std::vector<PeerBytes> block_transfers(const char* op, const char* side, const RowBlocks& blocks, int size,
                                       int64_t row_bytes) {
  std::vector<PeerBytes> transfers;
  const int64_t K = blocks.blocks_per_peer;
  for (int j = 0; j < size; ++j)
    for (int64_t i = j * K; i < (j + 1) * K; ++i) {
      int64_t at = 0, bytes = 0, end = 0;
      if (__builtin_mul_overflow(blocks.offset[i], row_bytes, &at) ||
          __builtin_mul_overflow(blocks.rows[i], row_bytes, &bytes) || __builtin_add_overflow(at, bytes, &end))
        throw CommError(concat("nccl ", op, ": ", side, " block ", i, " (", blocks.rows[i], " rows from row ",
                               blocks.offset[i], ", ", row_bytes, " bytes each) does not fit in int64 bytes"));
      if (bytes > 0) transfers.push_back({j, at, bytes});
    }
  return transfers;
}

// Where a rank's GPU is: its host and PCI bus id, for finding two ranks on one GPU.
struct GpuSite {
  char host[256] = {};
  char bus_id[64] = {};
};

// This rank's checks, before the first collective: "" when `gpu` is usable (it is then the current
// device, and `site` says where it is), else what is wrong.
std::string gpu_problem(int gpu, int rank, GpuSite& site) {
  int count = 0;
  const cudaError_t counted = cudaGetDeviceCount(&count);
  if (counted != cudaSuccess || count == 0)
    return concat("make_nccl_communicator: rank ", rank, " has no CUDA device (cudaGetDeviceCount: ",
                  counted == cudaSuccess ? "0 devices" : cudaGetErrorString(counted), ")");
  if (gpu < 0 || gpu >= count)
    return concat("make_nccl_communicator: rank ", rank, ": gpu = ", gpu, " is out of range; this machine has ",
                  count, " CUDA devices, [0, ", count, ")");
  cudaError_t result = cudaSetDevice(gpu);
  if (result == cudaSuccess) result = cudaDeviceGetPCIBusId(site.bus_id, sizeof site.bus_id - 1, gpu);
  if (result != cudaSuccess)
    return concat("make_nccl_communicator: rank ", rank, ": GPU ", gpu, ": ", cudaGetErrorString(result));
  gethostname(site.host, sizeof site.host - 1);
  return "";
}

// Collective over control: throws InvalidArgument (the same on every rank) when two ranks use one GPU.
void refuse_shared_gpus(Communicator& control, const GpuSite& mine) {
  std::vector<GpuSite> all(static_cast<size_t>(control.size()));
  control.all_gather(&mine, all.data(), sizeof mine);
  for (size_t i = 0; i < all.size(); ++i)
    for (size_t j = i + 1; j < all.size(); ++j)
      MOE_REQUIRE(std::strcmp(all[i].host, all[j].host) != 0 || std::strcmp(all[i].bus_id, all[j].bus_id) != 0,
                  "make_nccl_communicator: ranks ", i, " and ", j, " both use the GPU ", all[i].bus_id, " on ",
                  all[i].host, "; one NCCL communicator cannot hold two ranks on one GPU: give each rank of a "
                  "node its own GPU (its local rank)");
}

class NcclCommunicator final : public Communicator {
 public:
  // Collective over control; owned_control is control when this communicator owns it (split), else null.
  NcclCommunicator(std::unique_ptr<Communicator> owned_control, Communicator& control, int gpu)
      : owned_control_(std::move(owned_control)), control_(control), gpu_(gpu) {
    handle_->rank = control_.rank();
    GpuSite site;
    ncclUniqueId id{};
    std::string problem = gpu_problem(gpu_, rank(), site);
    if (problem.empty() && rank() == 0) {
      const ncclResult_t made = ncclGetUniqueId(&id);
      if (made != ncclSuccess) problem = concat("make_nccl_communicator: ncclGetUniqueId failed on rank 0: ",
                                                ncclGetErrorString(made));
    }
    throw_if_any_rank_failed(control_, problem);
    refuse_shared_gpus(control_, site);
    control_.broadcast(&id, sizeof id, 0);
    NCCL_CHECK(rank(), ncclCommInitRank(&handle_->comm, size(), id, rank()));
    std::lock_guard<std::mutex> lock(g_live_mutex);
    g_live.push_back(handle_.get());
  }

  ~NcclCommunicator() override {
    {
      // Out of the list, abort_nccl_communicators no longer touches it (it holds the list's mutex
      // while it aborts), and its abort, if any, is visible here.
      std::lock_guard<std::mutex> lock(g_live_mutex);
      g_live.erase(std::remove(g_live.begin(), g_live.end(), handle_.get()), g_live.end());
    }
    if (handle_->aborted) return;  // ncclCommAbort freed it
    ncclComm_t comm = nullptr;
    {
      std::lock_guard<std::mutex> lock(handle_->mutex);
      std::swap(comm, handle_->comm);  // requests still pending now say it was destroyed
    }
    // Finalize waits for this rank's enqueued collectives; after an asynchronous error they may never
    // finish, so the communicator is aborted instead. A destructor cannot throw: results are ignored.
    ncclResult_t async = ncclSuccess;
    if (ncclCommGetAsyncError(comm, &async) == ncclSuccess && async == ncclSuccess &&
        ncclCommFinalize(comm) == ncclSuccess)
      ncclCommDestroy(comm);
    else
      ncclCommAbort(comm);
  }

  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return control_.rank(); }
  int size() const override { return control_.size(); }
  const char* backend() const override { return "nccl"; }

  std::unique_ptr<Communicator> split(int color, int key) const override {
    std::unique_ptr<Communicator> part = control_.split(color, key);
    Communicator& part_control = *part;
    return std::make_unique<NcclCommunicator>(std::move(part), part_control, gpu_);
  }

  void all_reduce(void* data, int64_t count, ScalarType type, ReduceOp op, const Stream& stream) override {
    enqueue_all_reduce("all_reduce", data, count, type, op, stream);
  }

  void all_to_all_v(const void* send, const int64_t* send_rows, void* recv, const int64_t* recv_rows,
                    int64_t row_bytes, const Stream& stream) override {
    enqueue_all_to_all_v("all_to_all_v", send, send_rows, recv, recv_rows, row_bytes, stream);
  }

  void all_to_all_blocks(const void* send, const RowBlocks& send_blocks, void* recv, const RowBlocks& recv_blocks,
                         int64_t row_bytes, const Stream& stream) override {
    const char* op = "all_to_all_blocks";
    const cudaStream_t s = cuda_stream(op, stream);
    detail::check_row_blocks("nccl all_to_all_blocks", send_blocks, recv_blocks, size());
    if (row_bytes < 0) throw CommError(concat("nccl ", op, ": row_bytes = ", row_bytes, " must be >= 0"));
    enqueue_transfers(op, send, block_transfers(op, "send_blocks", send_blocks, size(), row_bytes), recv,
                      block_transfers(op, "recv_blocks", recv_blocks, size(), row_bytes), s);
  }

  std::unique_ptr<CommRequest> start_all_reduce(void* data, int64_t count, ScalarType type, ReduceOp op,
                                                const Stream& stream) override {
    const cudaStream_t s = enqueue_all_reduce("start_all_reduce", data, count, type, op, stream);
    return std::make_unique<NcclRequest>(handle_, s, "start_all_reduce");
  }

  std::unique_ptr<CommRequest> start_all_to_all_v(const void* send, const int64_t* send_rows, void* recv,
                                                  const int64_t* recv_rows, int64_t row_bytes,
                                                  const Stream& stream) override {
    const cudaStream_t s =
        enqueue_all_to_all_v("start_all_to_all_v", send, send_rows, recv, recv_rows, row_bytes, stream);
    return std::make_unique<NcclRequest>(handle_, s, "start_all_to_all_v");
  }

  // Control traffic (host memory) stays on the host communicator.
  void all_to_all(const void* send, void* recv, int64_t block_bytes) override {
    control_.all_to_all(send, recv, block_bytes);
  }
  void all_gather(const void* send, void* recv, int64_t bytes) override { control_.all_gather(send, recv, bytes); }
  void broadcast(void* data, int64_t bytes, int root) override { control_.broadcast(data, bytes, root); }
  void barrier() override { control_.barrier(); }

 private:
  // The stream's cudaStream_t; CommError unless it is a CUDA stream of this communicator's GPU, or
  // when the communicator was aborted.
  cudaStream_t cuda_stream(const char* op, const Stream& stream) const {
    if (handle_->aborted) throw CommError(concat("nccl ", op, ": rank ", rank(), ": the communicator was aborted"));
    if (stream.device != Device::CUDA)
      throw CommError(concat("nccl ", op, ": this communicator moves device memory of GPU ", gpu_,
                             " in a CUDA stream (Stream{Device::CUDA, cudaStream_t}), not the ",
                             to_string(stream.device), " stream"));
    const auto s = static_cast<cudaStream_t>(stream.handle);
    int device = -1;
    if (s == nullptr)
      NCCL_CUDA_CHECK(rank(), cudaGetDevice(&device));  // the default stream of the current device
    else
      NCCL_CUDA_CHECK(rank(), cudaStreamGetDevice(s, &device));
    if (device != gpu_)
      throw CommError(concat("nccl ", op, ": the stream belongs to GPU ", device, "; this communicator's GPU is ", gpu_));
    return s;
  }

  // CommError unless `buffer` (holding data) is device memory of this communicator's GPU or managed memory.
  void require_device_memory(const char* op, const char* what, const void* buffer) const {
    if (buffer == nullptr) throw CommError(concat("nccl ", op, ": ", what, " is null but has data"));
    cudaPointerAttributes a{};
    NCCL_CUDA_CHECK(rank(), cudaPointerGetAttributes(&a, buffer));
    if (a.type == cudaMemoryTypeManaged || (a.type == cudaMemoryTypeDevice && a.device == gpu_)) return;
    const std::string kind = a.type == cudaMemoryTypeDevice ? concat("memory of GPU ", a.device)
                             : a.type == cudaMemoryTypeHost ? std::string("pinned host memory")
                                                            : std::string("host memory");
    throw CommError(concat("nccl ", op, ": ", what, " is ", kind, "; this communicator takes device memory of GPU ",
                           gpu_));
  }

  cudaStream_t enqueue_all_reduce(const char* op, void* data, int64_t count, ScalarType type, ReduceOp reduce,
                                  const Stream& stream) {
    const cudaStream_t s = cuda_stream(op, stream);
    if (count < 0) throw CommError(concat("nccl ", op, ": count = ", count, " must be >= 0"));
    const ncclDataType_t nccl_dtype = nccl_type(type);
    const ncclRedOp_t nccl_reduce = nccl_op(reduce);
    if (count == 0) return s;  // the same count on every rank: all skip
    require_device_memory(op, "data", data);
    NCCL_CHECK(rank(), ncclAllReduce(data, data, static_cast<size_t>(count), nccl_dtype, nccl_reduce,
                                     handle_->comm, s));
    return s;
  }

  cudaStream_t enqueue_all_to_all_v(const char* op, const void* send, const int64_t* send_rows, void* recv,
                                    const int64_t* recv_rows, int64_t row_bytes, const Stream& stream) {
    const cudaStream_t s = cuda_stream(op, stream);
    if (send_rows == nullptr || recv_rows == nullptr)
      throw CommError(concat("nccl ", op, ": send_rows and recv_rows must not be null"));
    if (row_bytes < 0) throw CommError(concat("nccl ", op, ": row_bytes = ", row_bytes, " must be >= 0"));
    enqueue_transfers(op, send, peer_transfers(op, "send_rows", send_rows, size(), row_bytes), recv,
                      peer_transfers(op, "recv_rows", recv_rows, size(), row_bytes), s);
    return s;
  }

  // One group of ncclSend and ncclRecv of bytes. Transfers of no bytes are left out on both sides alike
  // (the counts agree pairwise across ranks); NCCL matches the rest between a pair of ranks in order.
  void enqueue_transfers(const char* op, const void* send, const std::vector<PeerBytes>& sends, void* recv,
                         const std::vector<PeerBytes>& recvs, cudaStream_t s) {
    if (!sends.empty()) require_device_memory(op, "send", send);
    if (!recvs.empty()) require_device_memory(op, "recv", recv);
    NCCL_CHECK(rank(), ncclGroupStart());
    try {
      for (const PeerBytes& t : sends)
        NCCL_CHECK(rank(), ncclSend(static_cast<const char*>(send) + t.at, static_cast<size_t>(t.bytes), ncclUint8,
                                    t.peer, handle_->comm, s));
      for (const PeerBytes& t : recvs)
        NCCL_CHECK(rank(), ncclRecv(static_cast<char*>(recv) + t.at, static_cast<size_t>(t.bytes), ncclUint8, t.peer,
                                    handle_->comm, s));
    } catch (const CommError&) {
      ncclGroupEnd();  // the group must be closed for this thread's next NCCL call
      throw;
    }
    NCCL_CHECK(rank(), ncclGroupEnd());
  }

  std::unique_ptr<Communicator> owned_control_;  // null unless made by split()
  Communicator& control_;
  const int gpu_;
  std::shared_ptr<NcclHandle> handle_ = std::make_shared<NcclHandle>();
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(Communicator& control, int gpu) {
  return std::make_unique<NcclCommunicator>(nullptr, control, gpu);
}

bool nccl_built() { return true; }

int abort_nccl_communicators() {
  std::lock_guard<std::mutex> live(g_live_mutex);
  int aborted = 0;
  for (NcclHandle* h : g_live) {
    std::lock_guard<std::mutex> lock(h->mutex);
    if (h->aborted || h->comm == nullptr) continue;
    h->aborted = true;
    ncclCommAbort(h->comm);  // its result cannot help: the communicator is gone either way
    ++aborted;
  }
  return aborted;
}

}  // namespace moe

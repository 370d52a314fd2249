// The tensor forms of the collectives (parallel/communicator.h).
#include "parallel/communicator.h"

#include <numeric>

#include "core/check.h"

namespace moe {

namespace {
void require_host(const char* op, const char* arg, const Tensor& t) {
  MOE_REQUIRE(t.defined() && t.device() == Device::CPU, op, ": ", arg,
              " must be a host tensor for this communicator, got a ", to_string(t.device()), " tensor");
}
}  // namespace

void all_reduce(Communicator& comm, Tensor& data, ReduceOp op) {
  require_host("all_reduce", "data", data);
  MOE_REQUIRE(data.dtype() == DType::F32 || data.dtype() == DType::I32, "all_reduce: data has dtype ",
              to_string(data.dtype()), "; accepted: float32, int32");
  comm.all_reduce(data.data(), data.numel(), data.dtype() == DType::F32 ? ScalarType::F32 : ScalarType::I32, op);
}

void all_to_all_v(Communicator& comm, const Tensor& send, const std::vector<int64_t>& send_rows, Tensor& recv,
                  const std::vector<int64_t>& recv_rows) {
  require_host("all_to_all_v", "send", send);
  require_host("all_to_all_v", "recv", recv);
  MOE_REQUIRE(send.rank() >= 1 && recv.rank() >= 1 && send.dtype() == recv.dtype() &&
                  send.numel() * recv.dim(0) == recv.numel() * send.dim(0),
              "all_to_all_v: send ", to_string(send.shape()), " and recv ", to_string(recv.shape()),
              " must be rows of the same width and dtype");
  const auto size = static_cast<size_t>(comm.size());
  MOE_REQUIRE(send_rows.size() == size && recv_rows.size() == size, "all_to_all_v: ", send_rows.size(), " and ",
              recv_rows.size(), " row counts for ", size, " ranks");
  MOE_REQUIRE(std::accumulate(send_rows.begin(), send_rows.end(), int64_t{0}) == send.dim(0) &&
                  std::accumulate(recv_rows.begin(), recv_rows.end(), int64_t{0}) == recv.dim(0),
              "all_to_all_v: the row counts do not add up to the rows of send ", to_string(send.shape()),
              " and recv ", to_string(recv.shape()));
  const int64_t row_elems = send.dim(0) > 0 ? send.numel() / send.dim(0) : (recv.dim(0) > 0 ? recv.numel() / recv.dim(0) : 0);
  comm.all_to_all_v(send.data(), send_rows.data(), recv.data(), recv_rows.data(), row_elems * dtype_size(send.dtype()));
}

}  // namespace moe

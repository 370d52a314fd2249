// CUDA token embedding: y = table[ids] and its backward, a scatter-add into the table's gradient
// (the row gather and scatter-add of rows.cu).
#include "core/backend.h"
#include "core/cuda/rows.h"

namespace moe::cuda {

// y (N, d) = table (V, d) [ids (N)].
void embedding_forward(Tensor& y, const Tensor& ids, const Tensor& table) {
  gather_rows_of("embedding_forward", "ids", y, table, ids);
}

// dtable (V, d) [ids[n]] += dy (N, d) [n].
void embedding_backward(Tensor& dtable, const Tensor& dy, const Tensor& ids) {
  scatter_add_rows_of("embedding_backward", "ids", dtable, dy, ids);
}

}  // namespace moe::cuda

// CPU token embedding: y = table[ids] and its backward, a scatter-add into the table's gradient.
#include "core/backend.h"
#include "core/cpu/row_gather.h"

namespace moe::cpu {

// y (N, d) = table (V, d) [ids (N)].
void embedding_forward(Tensor& y, const Tensor& ids, const Tensor& table) {
  gather_rows_for("embedding_forward", "ids", y, table, ids);
}

// dtable (V, d) [ids[n]] += dy (N, d) [n].
void embedding_backward(Tensor& dtable, const Tensor& dy, const Tensor& ids) {
  scatter_add_rows_for("embedding_backward", "ids", dtable, dy, ids);
}

}  // namespace moe::cpu

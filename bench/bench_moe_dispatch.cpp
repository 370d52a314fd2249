// Benchmark of the expert-parallel MoE layer under MPI: time per phase (exchanges included), the
// dispatcher's token exchange against a bare MPI_Alltoallv of the same byte counts, and the layer's
// per-rank throughput against the single-process layer, all timed in the same run.
// Run: mpirun -np 2 bench-moe-dispatch [--ep 2] [shape flags as bench-moe-layer]; prints on rank 0.
//
// Figures (GUIDE section 4). Every timed figure is, per repeat, the MAX over the world's ranks
// (all-reduce max: the slowest rank sets the pace), then the median over repeats.
//   phase times        = the layer's MoEPhaseTimes of forward and backward (stats())
//   S                  = bytes one rank sends in the forward token exchange, its own block included
//                        (nccl-tests' all-to-all size: sum over peers j of the rows sent to j * d * 4); the
//                        largest over ranks (it bounds the time)
//   algbw              = S / t  (GB/s = 1e9 bytes/s),  busbw = algbw * (n - 1) / n,  n = ep
//   exchange ratio     = t(dispatcher's forward token exchange) / t(bare MPI_Alltoallv with the same
//                        per-peer counts in MPI_FLOAT, on the same MPI_Comm, after a barrier; its send
//                        buffer is rewritten, untimed, just before, as the permute writes the dispatcher's;
//                        the dispatcher's exchange also lands rows in expert order, the bare one by source)
//   tokens/s per rank  = T / layer forward+backward time
//   throughput ratio   = distributed tokens/s / single-process tokens/s, where the single-process
//                        layer (groups = nullptr, all E experts, the same T and inputs) runs on every
//                        rank at the same time, so the machine is equally loaded in both
//   expert GEMM rate   = 3 * R * 2 * d * h * m / (forward + backward experts time of this rank), with R
//                        the kept pairs this rank's experts receive (from every rank of its group; the
//                        single-process layer: its own kept pairs), m = 2 matrices (ReLU/GELU), 3 (SwiGLU)
//   routing traffic    (untimed; with and without group-limited routing, --routing-groups, on the same
//                        inputs) ranks visited per token = the distinct ranks of its group holding its kept
//                        choices, its own included (mean and max over all ranks' tokens); rows out = kept
//                        choices whose expert is on another rank, one row each as this dispatcher sends
//                        them, or one per (token, other rank) as a dispatcher sending a token once per rank
//                        would (DeepSeek-V3's node-limited dispatch); bytes per step = 4 * rows out * d *
//                        (4, or 2 in bf16) summed over ranks: the rows go out and back, forward and backward
// Results are verified before timing: the distributed layer's y and dx must equal those of an ep = 1
// layer (every rank holding all experts) on the same inputs; the bare all-to-all must deliver every
// peer's block, before timing and after the last timed call.
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/command_line.h"
#include "core/cpu/gemm.h"
#include "core/moe/moe_layer.h"
#include "core/random.h"
#include "core/timer.h"
#include "parallel/mpi/mpi_communicator.h"
#include "parallel/all_to_all_exchange.h"
#include "parallel/process_groups.h"
#include "parallel/token_exchange.h"

#include "bench_util.h"

namespace {

using bench::median;

struct Args : bench::LayerArgs {
  int ep = 0;  // 0: the world size
  int64_t routing_groups = 0;  // moe.routing_groups: 0 = off; MoEConfig::kRoutingGroupsPerRank = ep
  int64_t top_groups = 1;
  std::string group_score = "top2_sum";
  bool help = false;
};

const char* kUsage =
    "usage: mpirun -np N bench-moe-dispatch [--ep N] [--d 512] [--h 2048] [--experts 8] [--topk 2]\n"
    "         [--tokens 4096 (per rank)] [--capacity-factor 1.25] [--activation gelu|relu|swiglu]\n"
    "         [--precision fp32|bf16 (of the rows exchanged)] [--threads 1 (per rank)] [--warmup 2] [--repeats 7]\n"
    "         [--routing-groups 0|G|ep] [--top-groups 1] [--group-score top2_sum|max]\n"
    "  --ep defaults to the world size; it must divide the world size, and --experts must be divisible by it.\n"
    "  --routing-groups G > 0 turns on group-limited routing (docs/routing.md): G groups of experts (ep: one\n"
    "  per rank), each token choosing its top-k experts in its --top-groups best groups.\n";

// Pure: every rank sees the same argv and reaches the same verdict.
Args parse(int argc, char** argv, int world_size) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string s = argv[i];
    if (s == "--help") {
      a.help = true;
      return a;
    }
    MOE_REQUIRE(i + 1 < argc, s, " needs a value; see --help");
    const char* v = argv[++i];
    if (s == "--ep") a.ep = static_cast<int>(moe::parse_integer_argument(s, v, 1, INT_MAX));
    else if (s == "--routing-groups")
      a.routing_groups = std::string(v) == "ep" ? moe::MoEConfig::kRoutingGroupsPerRank
                                                : moe::parse_integer_argument(s + " (or ep)", v, 0, INT64_MAX);
    else if (s == "--top-groups") a.top_groups = moe::parse_integer_argument(s, v, 1, INT64_MAX);
    else if (s == "--group-score") a.group_score = v;
    else if (!bench::parse_layer_arg(s, v, a))
      throw moe::InvalidArgument("unknown argument '" + s + "'; see --help");
  }
  if (a.ep == 0) a.ep = world_size;
  return a;
}

// max |a - b| / max |b|: a wrong or misplaced row gives O(1); NaN or Inf anywhere gives +inf.
double relative_error(const moe::Tensor& a, const moe::Tensor& b) {
  double diff = 0, scale = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double x = a.f32()[i], y = b.f32()[i];
    if (!std::isfinite(x) || !std::isfinite(y)) return std::numeric_limits<double>::infinity();
    diff = std::max(diff, std::fabs(x - y));
    scale = std::max(scale, std::fabs(y));
  }
  return scale > 0 ? diff / scale : diff;
}

// The bare all-to-all-v: the per-peer byte counts of the layer's forward token exchange (rows of
// row_bytes: d elements of the rows' dtype), in MPI_BYTE.
struct BareAlltoallv {
  MPI_Comm comm = MPI_COMM_NULL;
  int rank = 0;
  std::vector<int> send_counts, send_displs, recv_counts, recv_displs;
  std::vector<unsigned char> send, recv;

  // Block for peer j holds value(rank, j, i) at byte i, so the receiver can check every block.
  static unsigned char value(int src, int dst, int n, int64_t i) {
    return static_cast<unsigned char>(((src * n + dst) * 31 + i) % 251);
  }

  BareAlltoallv(MPI_Comm c, const moe::ExchangePlan& xp, int64_t row_bytes) : comm(c) {
    MPI_CHECK(MPI_Comm_rank(comm, &rank));
    int n = 0;
    MPI_CHECK(MPI_Comm_size(comm, &n));
    send_counts.resize(n), send_displs.resize(n), recv_counts.resize(n), recv_displs.resize(n);
    int64_t st = 0, rt = 0;
    for (int j = 0; j < n; ++j) {
      const int64_t send_rows = xp.dispatch_blocks.peer_rows(j), recv_rows = xp.expert_blocks.peer_rows(j);
      MOE_REQUIRE((st + send_rows * row_bytes) <= std::numeric_limits<int>::max() &&
                      (rt + recv_rows * row_bytes) <= std::numeric_limits<int>::max(),
                  "the bare MPI_Alltoallv takes int counts in bytes: shrink --tokens or --d");
      send_counts[j] = static_cast<int>(send_rows * row_bytes);
      recv_counts[j] = static_cast<int>(recv_rows * row_bytes);
      send_displs[j] = static_cast<int>(st);
      recv_displs[j] = static_cast<int>(rt);
      st += send_counts[j];
      rt += recv_counts[j];
    }
    // +1: a non-null buffer even when nothing moves.
    send.resize(st + 1);
    recv.resize(rt + 1);
    fill_send();
  }

  // Writes the send buffer, untimed, before each timed call: the layer's permute has just written the
  // rows the dispatcher sends, so both calls start with their send buffer equally fresh in cache.
  void fill_send() {
    const int n = static_cast<int>(send_counts.size());
    for (int j = 0; j < n; ++j)
      for (int64_t i = 0; i < send_counts[j]; ++i) send[send_displs[j] + i] = value(rank, j, n, i);
  }

  void run() {
    MPI_CHECK(MPI_Alltoallv(send.data(), send_counts.data(), send_displs.data(), MPI_BYTE, recv.data(),
                            recv_counts.data(), recv_displs.data(), MPI_BYTE, comm));
  }

  bool received_correctly() const {
    const int n = static_cast<int>(recv_counts.size());
    for (int j = 0; j < n; ++j)
      for (int64_t i = 0; i < recv_counts[j]; ++i)
        if (recv[recv_displs[j] + i] != value(j, rank, n, i)) return false;
    return true;
  }
};

// Where the kept choices of the world's tokens go (the routing traffic figures of the header), summed
// over the ranks (visited_max: the largest).
struct Traffic {
  double tokens = 0, visited_sum = 0, visited_max = 0, rows_out = 0, rank_rows_out = 0;
};

// The traffic of `layer`'s last forward on this rank, all-reduced over the world: the experts of
// layer's routing on the ranks of `layout`.
Traffic routing_traffic(const moe::MoELayer& layer, const moe::ExpertLayout& layout, moe::Communicator& world) {
  const moe::Tensor& expert = layer.router_output().expert;
  const int32_t* slot = layer.plan().slot.i32();
  const int64_t T = expert.dim(0), k = expert.dim(1);
  Traffic t;
  t.tokens = static_cast<double>(T);
  for (int64_t i = 0; i < T; ++i) {
    std::vector<bool> visits(layout.ep, false);
    for (int64_t j = 0; j < k; ++j) {
      if (slot[i * k + j] < 0) continue;  // dropped: it goes nowhere
      const int r = layout.owner_ep_rank(expert.i32()[i * k + j]);
      if (r != layout.ep_rank) t.rows_out += 1;
      visits[r] = true;
    }
    const auto visited = static_cast<double>(std::count(visits.begin(), visits.end(), true));
    t.visited_sum += visited;
    t.visited_max = std::max(t.visited_max, visited);
    t.rank_rows_out += visited - (visits[layout.ep_rank] ? 1 : 0);
  }
  double sums[4] = {t.tokens, t.visited_sum, t.rows_out, t.rank_rows_out};
  moe::all_reduce(world, sums, 4);
  t.tokens = sums[0], t.visited_sum = sums[1], t.rows_out = sums[2], t.rank_rows_out = sums[3];
  t.visited_max = moe::all_reduce_value(world, t.visited_max, moe::ReduceOp::Max);
  return t;
}

// The figures each rank contributes per repeat; all-reduced with max over ranks.
constexpr int kPhases = 8;
struct Row { const char* name; double moe::MoEPhaseTimes::*field; };
constexpr Row kRows[kPhases] = {{"route", &moe::MoEPhaseTimes::router},
                            {"permute", &moe::MoEPhaseTimes::permute},
                            {"counts exchange", &moe::MoEPhaseTimes::counts_exchange},
                            {"token exchange", &moe::MoEPhaseTimes::token_exchange},
                            {"experts", &moe::MoEPhaseTimes::experts},
                            {"return exchange", &moe::MoEPhaseTimes::return_exchange},
                            {"combine", &moe::MoEPhaseTimes::combine},
                            {"losses", &moe::MoEPhaseTimes::losses}};
constexpr int kTokenExchange = 3;
static_assert(kRows[kTokenExchange].field == &moe::MoEPhaseTimes::token_exchange, "row of the token exchange");
enum Figure {
  kForward = 0,                     // distributed layer, per phase
  kBackward = kPhases,
  kSingleForward = 2 * kPhases,     // single-process layer, per phase
  kSingleBackward = 3 * kPhases,
  kLayer = 4 * kPhases, kBare, kSingle, kNumFigures
};

int run(const Args& a, const moe::MoEConfig& cfg) {
  std::unique_ptr<moe::Communicator> world = moe::make_mpi_world_communicator();
  const int rank = world->rank(), W = world->size();
  moe::set_num_threads(a.threads);
  moe::ProcessGroups groups = moe::make_process_groups(*world, a.ep, a.E);
  const moe::ExpertLayout& layout = groups.layout;
  auto* ep_mpi = dynamic_cast<moe::MpiCommunicator*>(groups.expert_parallel.data);
  MOE_ASSERT(ep_mpi != nullptr, "an MPI world splits into MPI communicators");
  const int ep = layout.ep;
  const int64_t d = a.d, T = a.T;

  // Each rank's tokens are rows [rank * T, (rank + 1) * T) of one global (W * T, d) input.
  moe::Tensor x = moe::Tensor::empty({T, d});
  moe::fill_normal(x, 1.f, moe::stream_id(7, "bench.x"), static_cast<uint64_t>(rank * T * d));
  moe::Tensor dy = moe::Tensor::empty({T, d});
  moe::fill_normal(dy, 1.f, moe::stream_id(7, "bench.dy"), static_cast<uint64_t>(rank * T * d));
  moe::Tensor y = moe::Tensor::empty({T, d}), dx = moe::Tensor::zeros({T, d});
  moe::Tensor ys = moe::Tensor::empty({T, d}), dxs = moe::Tensor::zeros({T, d});

  // The gate of bench-moe-layer: larger router weights than the training init (std 0.5), so routing
  // is as peaked as a trained router's; same seed and gate in every layer here, so the same routing.
  auto make_layer = [&](const moe::ProcessGroups* g) {
    auto layer = std::make_unique<moe::MoELayer>(cfg, 42, g ? moe::make_all_to_all_exchange(*g, moe::Stream::host()) : nullptr);
    moe::fill_normal(layer->weights.w_gate, 0.5f, moe::stream_id(42, "bench.gate"));
    return layer;
  };
  std::unique_ptr<moe::MoELayer> dist = make_layer(&groups);
  std::unique_ptr<moe::MoELayer> single = make_layer(nullptr);

  if (rank == 0)
    std::printf("bench-moe-dispatch: world=%d ep=%d d=%lld h=%lld E=%lld (%lld per rank) k=%lld T=%lld per rank "
                "capacity_factor=%.2f activation=%s precision=%s threads=%d per rank provider=%s\n",
                W, ep, (long long)d, (long long)a.h, (long long)a.E, (long long)layout.experts_per_rank,
                (long long)a.k, (long long)T, a.cf, a.activation.c_str(), a.precision.c_str(), a.threads,
                moe::gemm_provider());

  // Verification: the same inputs through an ep = 1 layer (every rank holds all E experts, nothing
  // exchanged). Tolerance 1e-4 of the largest reference value: the expert GEMMs see row blocks of a
  // different height (rows from every rank of the group), so the GEMM provider may sum in another
  // order (float32, K = d or h terms: ~sqrt(K) * 6e-8 ~ 3e-6); any misrouted row gives O(1).
  const double tolerance = 1e-4;
  {
    moe::ProcessGroups ref_groups = moe::make_process_groups(*world, 1, a.E);
    std::unique_ptr<moe::MoELayer> ref = make_layer(&ref_groups);
    moe::Tensor y_ref = moe::Tensor::empty({T, d}), dx_ref = moe::Tensor::zeros({T, d});
    dist->forward(y, x, /*training=*/true);
    dist->backward(dx, dy);
    ref->forward(y_ref, x, /*training=*/true);
    ref->backward(dx_ref, dy);
    double err = std::max(relative_error(y, y_ref), relative_error(dx, dx_ref));
    err = moe::all_reduce_value(*world, err, moe::ReduceOp::Max);
    if (!(err <= tolerance)) {
      if (rank == 0)
        std::fprintf(stderr,
                     "bench-moe-dispatch: verification failed: the ep=%d layer's outputs (y, dx) differ from "
                     "an ep=1 layer's on the same inputs: max relative error %.3g > tolerance %.1g\n",
                     ep, err, tolerance);
      return 1;  // every rank saw the same reduced error, so every rank returns here
    }
    if (rank == 0)
      std::printf("verified: y and dx equal an ep=1 layer's on the same inputs (max relative error %.2g, "
                  "tolerance %.0e of the largest value)\n",
                  err, tolerance);
  }

  // The forward token exchange's per-peer counts (the counts all-to-all again, outside any timing).
  const moe::ExchangePlan xp = moe::make_exchange_plan(dist->plan(), layout, *groups.expert_parallel.control);
  // The routing traffic of the layer (as verified) and, with group-limited routing, of the same layer
  // without it (one process's layer: the routing and the capacity per source rank are the same).
  const Traffic traffic = routing_traffic(*dist, layout, *world);
  Traffic unlimited = traffic;
  if (cfg.routing_groups > 0) {
    moe::MoEConfig off = cfg;
    off.routing_groups = 0;
    auto layer = std::make_unique<moe::MoELayer>(off, 42);
    moe::fill_normal(layer->weights.w_gate, 0.5f, moe::stream_id(42, "bench.gate"));
    layer->forward(ys, x, /*training=*/true);
    unlimited = routing_traffic(*layer, layout, *world);
  }
  const int64_t sent_rows = xp.dispatch_blocks.total_rows(), self_rows = xp.dispatch_blocks.peer_rows(layout.ep_rank);
  const int64_t received = xp.received_rows();
  const int64_t kept = dist->stats().kept_total;
  // Rows travel in bfloat16 in bf16 runs (2 bytes an element), float32 otherwise.
  const int64_t row_bytes = d * (cfg.precision == moe::Precision::BF16 ? 2 : 4);
  BareAlltoallv bare(ep_mpi->handle(), xp, row_bytes);
  bare.run();
  const int bare_ok = moe::all_reduce_value(*world, bare.received_correctly() ? 1 : 0, moe::ReduceOp::Min);
  MOE_ASSERT(bare_ok == 1, "the bare MPI_Alltoallv delivers every peer's block");

  std::vector<std::vector<double>> figures;  // [repeat][Figure], max over ranks
  std::vector<double> dist_experts, single_experts;  // this rank's own experts time, fwd + bwd
  int64_t single_kept = 0;
  for (int it = 0; it < a.warmup + a.repeats; ++it) {
    std::vector<double> f(kNumFigures, 0.0);

    world->barrier();
    double t0 = moe::now_seconds();
    dist->forward(y, x, /*training=*/true);
    dist->backward(dx, dy);
    f[kLayer] = moe::now_seconds() - t0;
    const moe::MoEStats& st = dist->stats();
    MOE_ASSERT(st.kept_total == kept, "same input, same routing every repeat");
    for (int p = 0; p < kPhases; ++p) {
      f[kForward + p] = st.forward_time.*kRows[p].field;
      f[kBackward + p] = st.backward_time.*kRows[p].field;
    }
    const double my_dist_experts = st.forward_time.experts + st.backward_time.experts;

    if (ep > 1) {
      bare.fill_send();
      MPI_CHECK(MPI_Barrier(bare.comm));
      t0 = moe::now_seconds();
      bare.run();
      f[kBare] = moe::now_seconds() - t0;
    }

    world->barrier();
    t0 = moe::now_seconds();
    single->forward(ys, x, /*training=*/true);
    single->backward(dxs, dy);
    f[kSingle] = moe::now_seconds() - t0;
    const moe::MoEStats& ss = single->stats();
    single_kept = ss.kept_total;
    for (int p = 0; p < kPhases; ++p) {
      f[kSingleForward + p] = ss.forward_time.*kRows[p].field;
      f[kSingleBackward + p] = ss.backward_time.*kRows[p].field;
    }
    const double my_single_experts = ss.forward_time.experts + ss.backward_time.experts;

    moe::all_reduce(*world, f.data(), kNumFigures, moe::ReduceOp::Max);
    if (it < a.warmup) continue;
    figures.push_back(f);
    dist_experts.push_back(my_dist_experts);
    single_experts.push_back(my_single_experts);
  }
  const int bare_still_ok = moe::all_reduce_value(*world, bare.received_correctly() ? 1 : 0, moe::ReduceOp::Min);
  MOE_ASSERT(bare_still_ok == 1, "the timed bare MPI_Alltoallv calls deliver every peer's block");
  auto med = [&](int figure) {
    std::vector<double> v;
    for (const auto& f : figures) v.push_back(f[figure]);
    return median(v);
  };

  // Per-rank context: rows moved and the expert GEMM rates, gathered to rank 0.
  const int64_t m = cfg.activation == moe::Activation::SwiGLU ? 3 : 2;
  const double flops_per_row = 3.0 * 2.0 * d * a.h * m;
  enum { kKept, kSent, kSelf, kReceived, kDistRate, kSingleKept, kSingleRate, kSendBytes, kPerRank };
  std::vector<double> mine(kPerRank), all(static_cast<size_t>(kPerRank) * W);
  mine[kKept] = static_cast<double>(kept);
  mine[kSent] = static_cast<double>(sent_rows);
  mine[kSelf] = static_cast<double>(self_rows);
  mine[kReceived] = static_cast<double>(received);
  mine[kDistRate] = flops_per_row * received / median(dist_experts) / 1e9;
  mine[kSingleKept] = static_cast<double>(single_kept);
  mine[kSingleRate] = flops_per_row * single_kept / median(single_experts) / 1e9;
  mine[kSendBytes] = static_cast<double>(sent_rows) * row_bytes;
  world->all_gather(mine.data(), all.data(), kPerRank * static_cast<int64_t>(sizeof(double)));
  if (rank != 0) return 0;

  const int64_t capacity = dist->stats().capacity;
  if (capacity < 0) std::printf("routing: dropless; kept of T*k=%lld choices:", (long long)(T * a.k));
  else
    std::printf("routing: capacity %lld per (source rank, expert); kept of T*k=%lld choices:", (long long)capacity,
                (long long)(T * a.k));
  for (int r = 0; r < W; ++r) std::printf(" rank %d %.0f", r, all[r * kPerRank + kKept]);
  std::printf("\n");

  std::printf("\n%-30s %21s %23s\n", "phase, ms", "distributed (ep)", "single-process (all E)");
  std::printf("(max over ranks, median of %2d) %10s %10s %11s %11s\n", a.repeats, "forward", "backward", "forward",
              "backward");
  for (int p = 0; p < kPhases; ++p)
    std::printf("%-30s %10.3f %10.3f %11.3f %11.3f\n", kRows[p].name, 1e3 * med(kForward + p),
                1e3 * med(kBackward + p), 1e3 * med(kSingleForward + p), 1e3 * med(kSingleBackward + p));
  const double t_dist = med(kLayer), t_single = med(kSingle);
  std::printf("%-30s %21.3f %23.3f\n", "layer fwd+bwd", 1e3 * t_dist, 1e3 * t_single);

  if (ep > 1) {
    double S = 0;
    for (int r = 0; r < W; ++r) S = std::max(S, all[r * kPerRank + kSendBytes]);
    const double t_disp = med(kForward + kTokenExchange), t_bare = med(kBare);
    const double bus = (ep - 1.0) / ep;
    std::printf("\nforward token exchange (n=%d ranks per group; S = bytes a rank sends, its own block included,\n"
                "as nccl-tests' all-to-all; largest over ranks: %.2f MiB; algbw = S/t, busbw = algbw*(n-1)/n)\n",
                ep, S / (1024.0 * 1024.0));
    std::printf("%-22s %10s %12s %12s\n", "", "time ms", "algbw GB/s", "busbw GB/s");
    std::printf("%-22s %10.3f %12.2f %12.2f\n", "dispatcher", 1e3 * t_disp, S / t_disp / 1e9, S / t_disp / 1e9 * bus);
    std::printf("%-22s %10.3f %12.2f %12.2f\n", "bare MPI_Alltoallv", 1e3 * t_bare, S / t_bare / 1e9,
                S / t_bare / 1e9 * bus);
    std::printf("ratio dispatcher/bare: %8.3f   (target <= 1.1)\n", t_disp / t_bare);
  } else {
    std::printf("\nep = 1: no token exchange to compare\n");
  }

  std::printf("\nrank  kept rows  sent rows (to self)  received rows  expert GFLOP/s   single: kept rows  expert GFLOP/s\n");
  for (int r = 0; r < W; ++r) {
    const double* p = &all[r * kPerRank];
    std::printf("%4d %10.0f %10.0f (%7.0f) %14.0f %15.1f %19.0f %15.1f\n", r, p[kKept], p[kSent], p[kSelf],
                p[kReceived], p[kDistRate], p[kSingleKept], p[kSingleRate]);
  }

  const double tps_dist = T / t_dist, tps_single = T / t_single;
  std::printf("\nrouting traffic (all ranks' tokens; bytes per step = 4 x rows out x %lld bytes, summed over ranks)\n",
              (long long)row_bytes);
  std::printf("%-32s %19s   %26s   %26s\n", "", "ranks visited/token", "one row per kept choice",
              "one row per (token, rank)");
  std::printf("%-32s %9s %9s   %14s %11s   %14s %11s\n", "", "mean", "max", "rows out", "MiB/step", "rows out",
              "MiB/step");
  auto print_traffic = [&](const std::string& name, const Traffic& t) {
    const double mib = 4.0 * row_bytes / (1024.0 * 1024.0);
    std::printf("%-32s %9.3f %9.0f   %14.0f %11.2f   %14.0f %11.2f\n", name.c_str(), t.visited_sum / t.tokens,
                t.visited_max, t.rows_out, t.rows_out * mib, t.rank_rows_out, t.rank_rows_out * mib);
  };
  print_traffic("no group limit", unlimited);
  if (cfg.routing_groups > 0)
    print_traffic(moe::detail::concat("groups ", cfg.routing_groups, ", top ", cfg.top_groups, " (",
                                      moe::to_string(cfg.group_score), ")"),
                  traffic);

  std::printf("\nthroughput per rank:  distributed %10.0f tokens/s   single-process %10.0f tokens/s\n", tps_dist,
              tps_single);
  std::printf("ratio distributed/single: %8.3f   (target >= 0.8)\n", tps_dist / tps_single);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::unique_ptr<moe::MpiSession> session;
  int rank = 0, world_size = 1;
  try {
    session = std::make_unique<moe::MpiSession>(&argc, &argv);
    MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
    MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world_size));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench-moe-dispatch: %s\n", e.what());
    return 1;
  }

  // Checks that need no communication: every rank reaches the same verdict, so every rank can print
  // nothing (rank 0 prints the message) and exit non-zero, with no collective left waiting.
  Args a;
  moe::MoEConfig cfg;
  try {
    a = parse(argc, argv, world_size);
    if (a.help) {
      if (rank == 0) std::printf("%s", kUsage);
      return 0;
    }
    cfg = bench::layer_config(a);
    cfg.top_groups = a.top_groups;
    cfg.group_score = moe::parse_group_score(a.group_score);
    // "ep" as a number here, so that the ep = 1 and single-process layers route as the distributed one.
    cfg.routing_groups = a.routing_groups;
    cfg.validate_routing_groups(a.ep);
    cfg.routing_groups = cfg.routing_groups_for(a.ep);
    cfg.validate();
    moe::make_expert_layout(world_size, rank, a.ep, a.E);
  } catch (const std::exception& e) {
    if (rank == 0) std::fprintf(stderr, "bench-moe-dispatch: %s\n", e.what());
    return 1;
  }

  // From here on an error may be seen by one rank only: abort them all rather than leave the others
  // waiting in a collective.
  try {
    return run(a, cfg);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench-moe-dispatch: rank %d: %s\n", rank, e.what());
    moe::mpi_abort(1);
  }
}

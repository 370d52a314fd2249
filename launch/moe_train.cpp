// moe-train: trains an MoE transformer language model described by a YAML config, on every rank
// of an MPI job: mpirun -np N moe-train CONFIG.yaml [key.path=value ...].
#include <csignal>
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <thread>
#include <vector>

#include "core/check.h"
#include "launch/config/memory_estimate.h"
#include "launch/config/train_config.h"
#include "launch/trainer/trainer.h"
#include "parallel/mpi/mpi_communicator.h"
#include "parallel/nccl/nccl_communicator.h"

namespace {

const char* kUsage = R"(usage: mpirun -np N moe-train CONFIG.yaml [--eval-only] [key.path=value ...]

Trains the MoE language model that CONFIG.yaml describes (see configs/ for examples); each
key.path=value overrides one config key, e.g. run.steps=50 moe.top_k=1 parallel.ep=2.
--eval-only trains nothing: it loads the newest complete checkpoint in checkpoint.dir (or
checkpoint.init_from), evaluates it on the held-out data, prints the loss and perplexity and
appends them to run.dir/metrics.jsonl.
Rank 0 prints the resolved config and a progress line every run.log_every steps, and writes
config.yaml, metrics.jsonl, tensorboard/, routing_report.txt and, once the last step is done,
DONE into run.dir. moe-run and moe-submit start it from the config's launch: and scheduler:
sections (docs/launch.md), which moe-train itself ignores.
SIGTERM or SIGUSR1 makes every rank finish its step, save a checkpoint and exit 0; with
checkpoint.resume=auto the next start continues from it.
Exit status: 0 on success; 2 for a bad config, argument, data file or directory; 3 when the run
stopped itself (too many non-finite steps); 4 when writing a log file in run.dir failed (training
went on, DONE was not written); 5 when the launcher (mpirun) died: each rank stops by itself,
without starting another checkpoint; 1 for any other error; a watchdog timeout aborts the job.

Config keys (path, type, default, accepted values):
)";

// SIGTERM (what schedulers send before preemption) and SIGUSR1 (what mpirun forwards to every rank
// without killing them, and what the generated Slurm script asks for before the time limit): finish
// the step, save a checkpoint, exit 0.
//
// No handler may run on a compute thread: oneDNN's JIT GEMM kernels (Debian's 2.6 included) point rsp
// into a heap buffer while they run, so the kernel would write the signal frame into the heap and
// corrupt it (uxlfoundation/oneDNN#4845, fixed in oneDNN 3.11; measured here: a crash in about one
// SIGTERM in four). So main() blocks both signals before any thread exists (MPI's, OpenMP's and the
// watchdog inherit the mask) and one thread of their own takes them with sigwait. The handler stays
// installed in case a library thread unblocks them, so that they never kill the rank.
sigset_t stop_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGUSR1);
  return set;
}

void block_stop_signals() {
  const sigset_t set = stop_signals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

void on_stop_signal(int) { moe::request_stop(); }

void install_stop_handlers() {
  struct sigaction sa = {};
  sa.sa_handler = on_stop_signal;
  sa.sa_flags = SA_RESTART;  // system calls interrupted by the signal (MPI's included) resume
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGUSR1, &sa, nullptr);
  std::thread([] {
    const sigset_t set = stop_signals();
    int sig = 0;
    while (sigwait(&set, &sig) == 0) moe::request_stop();
  }).detach();  // blocked in sigwait until the process exits
}

// Ends every rank: first this process's NCCL communicators (ncclCommAbort, so that no GPU kernel is
// left waiting for a peer and a rank stuck in one gets out), then MPI's.
[[noreturn]] void abort_all_ranks(int code) {
  moe::abort_nccl_communicators();
  moe::mpi_abort(code);
}

// Called from the watchdog thread: report and take every rank down.
void on_watchdog(const std::string& message) {
  std::fprintf(stderr, "moe-train: %s; aborting all ranks\n", message.c_str());
  std::fflush(stderr);
  abort_all_ranks(4);
}

}  // namespace

int main(int argc, char** argv) {
  const moe::LauncherWatch launcher = moe::LauncherWatch::of_this_process();  // before the launcher can die
  block_stop_signals();  // first: every thread started from here on inherits the mask
  moe::MpiSession mpi(&argc, &argv);
  std::unique_ptr<moe::Communicator> world = moe::make_mpi_world_communicator();
  const int rank = world->rank();
  auto fail = [&](int status, const std::string& message) {
    // Every rank reaches this point with the same message (the checks below use only what every
    // rank has), so rank 0 alone prints it and all ranks exit without a collective.
    if (rank == 0) std::fprintf(stderr, "moe-train: %s\n", message.c_str());
    return status;
  };

  std::vector<std::string> args(argv + 1, argv + argc);
  if (!args.empty() && (args[0] == "--help" || args[0] == "-h")) {
    if (rank == 0) std::printf("%s%s", kUsage, moe::config_keys_help().c_str());
    return 0;
  }
  moe::RunMode mode = moe::RunMode::Train;
  for (auto it = args.begin(); it != args.end();) {
    if (*it == "--eval-only") {
      mode = moe::RunMode::EvalOnly;
      it = args.erase(it);
    } else if (it->rfind("-", 0) == 0) {
      return fail(2, "unknown option '" + *it + "'; accepted: --help, --eval-only, then CONFIG.yaml and key.path=value");
    } else {
      ++it;
    }
  }
  if (args.empty())
    return fail(2, "missing CONFIG.yaml; usage: moe-train CONFIG.yaml [--eval-only] [key.path=value ...] (see --help)");

  moe::TrainConfig cfg;
  try {
    cfg = moe::load_train_config(args[0], std::vector<std::string>(args.begin() + 1, args.end()));
    moe::validate_for_world(cfg, world->size());
    // Before anything is allocated; the figure is agreed by all ranks (every rank gets here).
    moe::require_fits_in_memory(cfg, world->size(), moe::available_memory_per_rank(*world));
  } catch (const moe::InvalidArgument& e) {
    return fail(2, e.what());
  }

  install_stop_handlers();
  try {
    moe::TrainOptions options;
    options.mode = mode;
    options.on_watchdog = on_watchdog;
    options.launcher = launcher;
    options.hooks = moe::TestHooks::from_environment();
    const moe::TrainResult result = moe::run_training(cfg, *world, options);
    return result.log_write_failure.empty() ? 0 : 4;  // rank 0 printed it when it happened
  } catch (const moe::InvalidArgument& e) {
    return fail(2, e.what());  // data files and checkpoints: every rank opens them and fails alike
  } catch (const moe::TrainingStopped& e) {
    return fail(3, e.what());  // decided from all-reduced values: every rank stops together
  } catch (const std::exception& e) {
    // Possibly seen by this rank alone while the others wait in a collective: take them down.
    std::fprintf(stderr, "moe-train: rank %d: error: %s\n", rank, e.what());
    std::fflush(stderr);
    if (world->size() > 1) abort_all_ranks(1);
    return 1;
  }
}

// GoogleTest main for distributed tests: every rank runs every test; rank 0 prints the usual
// report, other ranks print only their failures (prefixed "[rank R]"), and all exit non-zero if any
// rank failed.
#include <gtest/gtest.h>

#include <cstdio>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "parallel/mpi/mpi_communicator.h"
#include "tests/mpi_test_util.h"

namespace moe {
namespace {

std::unique_ptr<Communicator> g_world;

// Prints each failure as it happens on a rank whose default printer was removed, so that a failure
// is visible even if the rank then hangs in a collective.
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}

  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    if (result.file_name() != nullptr)
      std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_, result.file_name(), result.line_number(),
                   result.message());
    else
      std::fprintf(stderr, "[rank %d] unknown file: Failure\n%s\n", rank_, result.message());
  }

  void OnTestEnd(const ::testing::TestInfo& info) override {
    if (info.result()->Failed())
      failed_.push_back(std::string(info.test_suite_name()) + "." + info.name());
  }

  const std::vector<std::string>& failed() const { return failed_; }

 private:
  int rank_;
  std::vector<std::string> failed_;
};

}  // namespace

Communicator& test_world() {
  if (!g_world) g_world = make_mpi_world_communicator();
  return *g_world;
}

}  // namespace moe

int main(int argc, char** argv) {
  try {
    moe::MpiSession session(&argc, &argv);
    ::testing::InitGoogleTest(&argc, argv);

    int rank = 0;
    MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
    moe::RankFailurePrinter* rank_printer = nullptr;
    if (rank != 0) {
      ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
      delete listeners.Release(listeners.default_result_printer());
      rank_printer = new moe::RankFailurePrinter(rank);
      listeners.Append(rank_printer);  // owned by GoogleTest from here on
    }

    const int local_failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
    if (rank_printer != nullptr) {
      for (const std::string& name : rank_printer->failed()) std::fprintf(stderr, "[rank %d] FAILED %s\n", rank, name.c_str());
    }
    int any_failed = local_failed;
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD));
    if (any_failed && !local_failed && rank == 0)
      std::fprintf(stderr, "[rank 0] all tests passed here, but another rank failed (see its [rank R] lines)\n");

    moe::g_world.reset();  // free the world communicator while MPI still runs
    return any_failed ? 1 : 0;
  } catch (const std::exception& e) {
    // Outside any test (MPI start-up or the final reduction): the other ranks may be waiting.
    std::fprintf(stderr, "mpi_test_main: %s\n", e.what());
    moe::mpi_abort(2);
  }
}

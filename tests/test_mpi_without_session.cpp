// The MPI communicator's contract when no MpiSession has started MPI: a clear CommError, no crash.
#include <gtest/gtest.h>

#include <string>

#include "parallel/mpi/mpi_communicator.h"

namespace moe {
namespace {

TEST(MpiWithoutSession, WorldCommunicatorThrowsNamingTheMissingSession) {
  try {
    make_mpi_world_communicator();
    FAIL() << "expected CommError";
  } catch (const CommError& e) {
    EXPECT_NE(std::string(e.what()).find("create an MpiSession first"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace moe

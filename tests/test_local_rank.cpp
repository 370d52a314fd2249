// Distributed test of parallel/local_rank.h under mpirun (all ranks on this machine): the placement
// agrees with an MPI shared-memory split, and mpirun's environment is the source it comes from.
#include <gtest/gtest.h>
#include <mpi.h>

#include <vector>

#include "parallel/communicator.h"
#include "parallel/local_rank.h"
#include "tests/mpi_test_util.h"

namespace moe {
namespace {

TEST(LocalPlacement, EveryRankOnThisMachineHasItsOwnLocalRankOnNodeZero) {
  Communicator& world = test_world();
  const LocalPlacement p = local_placement(world);
  EXPECT_EQ(p.source, "OMPI_COMM_WORLD_LOCAL_RANK");  // run by mpirun (tests/CMakeLists.txt)
  EXPECT_EQ(p.node, 0);                               // from the MPI split: OpenMPI does not export it
  EXPECT_EQ(p.local_size, world.size());
  std::vector<int> locals(world.size(), -1);
  const int mine = p.local_rank;
  world.all_gather(&mine, locals.data(), sizeof mine);
  std::vector<bool> seen(world.size(), false);
  for (int l : locals) {
    ASSERT_GE(l, 0);
    ASSERT_LT(l, world.size());
    EXPECT_FALSE(seen[l]) << "local rank " << l << " twice";
    seen[l] = true;
  }
  // The same as MPI's own shared-memory split of the world.
  MPI_Comm node = MPI_COMM_NULL;
  ASSERT_EQ(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, world.rank(), MPI_INFO_NULL, &node), MPI_SUCCESS);
  int node_rank = -1, node_size = -1;
  MPI_Comm_rank(node, &node_rank);
  MPI_Comm_size(node, &node_size);
  MPI_Comm_free(&node);
  EXPECT_EQ(p.local_rank, node_rank);
  EXPECT_EQ(p.local_size, node_size);
}

TEST(LocalPlacement, ASingleProcessCommunicatorIsRankZeroOfOne) {
  const auto local = make_local_communicator();
  const LocalPlacement p = local_placement(*local);
  EXPECT_EQ(p.local_rank, 0);
  EXPECT_EQ(p.local_size, 1);
  EXPECT_EQ(p.node, 0);
}

}  // namespace
}  // namespace moe

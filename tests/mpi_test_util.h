// Helpers for distributed GoogleTest binaries (linked with mpi_test_main.cpp, run under mpirun).
#pragma once

#include <cstdint>
#include <vector>

#include "parallel/communicator.h"

namespace moe {

// The MPI world communicator shared by all tests of the process, created on first use (after
// mpi_test_main.cpp has started MPI) and freed before MPI is finalised. Every rank runs the same
// tests in the same order, so collective calls on it match up across ranks.
Communicator& test_world();

// A layout for all_to_all_blocks tests: blocks_per_peer blocks per peer, peer j's block b holding
// rows(j, b) rows, laid out peer-major (each peer's blocks in turn, like dispatch order) or block-major
// (block b of every peer in turn, like expert order), with one row left out before every block.
template <typename Rows>
RowBlocks spaced_blocks(int peers, int64_t blocks_per_peer, bool block_major, Rows rows) {
  RowBlocks layout{blocks_per_peer, std::vector<int64_t>(peers * blocks_per_peer),
                   std::vector<int64_t>(peers * blocks_per_peer)};
  int64_t next = 0;
  for (int64_t outer = 0; outer < (block_major ? blocks_per_peer : peers); ++outer)
    for (int64_t inner = 0; inner < (block_major ? peers : blocks_per_peer); ++inner) {
      const int j = static_cast<int>(block_major ? inner : outer);
      const int64_t b = block_major ? outer : inner;
      const int64_t i = j * blocks_per_peer + b;
      layout.rows[i] = rows(j, b);
      layout.offset[i] = next + 1;
      next += 1 + layout.rows[i];
    }
  return layout;
}

}  // namespace moe

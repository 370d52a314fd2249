// Helpers for distributed GoogleTest binaries (linked with mpi_test_main.cpp, run under mpirun).
#pragma once

#include "parallel/communicator.h"

namespace moe {

// The MPI world communicator shared by all tests of the process, created on first use (after
// mpi_test_main.cpp has started MPI) and freed before MPI is finalised. Every rank runs the same
// tests in the same order, so collective calls on it match up across ranks.
Communicator& test_world();

}  // namespace moe

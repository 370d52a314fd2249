// Noticing that the launcher which started this rank has died (launch/trainer/launcher_watch.h).
#include "launch/trainer/launcher_watch.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>

namespace moe {

LauncherWatch LauncherWatch::of_this_process() {
  LauncherWatch w;
  if (std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr || std::getenv("PMIX_RANK") != nullptr ||
      std::getenv("PMI_RANK") != nullptr)
    w.parent_ = ::getppid();
  return w;
}

bool LauncherWatch::gone() const { return parent_ != 0 && ::getppid() != parent_; }

void LauncherWatch::stop_if_gone(int rank) const {
  if (!gone()) return;
  std::fprintf(stderr,
               "moe-train: rank %d: the launcher that started it (parent process %d, mpirun or its daemon) is "
               "gone; stopping now, without starting another checkpoint\n",
               rank, static_cast<int>(parent_));
  std::fflush(stderr);
  std::_Exit(5);
}

}  // namespace moe

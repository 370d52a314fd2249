// Noticing that the launcher which started this rank has died. mpirun (or the orted/prted daemon
// that starts the ranks on another node) is the ranks' parent process; killed with SIGKILL it
// cannot take them down, and they would train on, still writing checkpoints. A rank whose parent
// died is re-parented (to init or a subreaper), so a changed getppid() is the sign: the rank then
// stops itself, without starting another checkpoint.
//
// Under srun the parent is slurmstepd, which outlives srun and ends the tasks itself; moe-run
// replaces itself with mpirun (exec), so the parent is mpirun all the same.
#pragma once

#include <sys/types.h>

namespace moe {

class LauncherWatch {
 public:
  LauncherWatch() = default;  // watches nothing: gone() is always false

  // The watch of this process: records its parent now, so call it first thing in main, before the
  // launcher could have died. Only a rank started by a launcher is watched (OpenMPI's
  // OMPI_COMM_WORLD_SIZE, or a PMI rank from srun: PMIX_RANK, PMI_RANK); a moe-train started on its
  // own has a shell for a parent, which may well exit first (nohup).
  static LauncherWatch of_this_process();

  // Whether the parent recorded at the start is no longer this process' parent. Thread-safe.
  bool gone() const;

  // When gone(): prints one line naming the rank and the launcher's pid to stderr and ends the
  // process at once (exit status 5), from any thread, without finalising MPI (its launcher is gone).
  // A checkpoint being written then stays incomplete, which resume ignores; none is started.
  void stop_if_gone(int rank) const;

 private:
  pid_t parent_ = 0;  // 0: not watched
};

}  // namespace moe

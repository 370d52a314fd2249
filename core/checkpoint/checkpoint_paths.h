// Where the checkpoint a command line names is: a checkpoint directory as given, or the newest complete
// checkpoint of a run directory (RUN/checkpoints) or of a checkpoint root. moe-ckpt and moe-generate
// accept the same paths.
#pragma once

#include <string>

#include "core/status.h"

namespace moe {

// The checkpoint root of a run directory (RUN/checkpoints when it exists), else path itself.
std::string checkpoint_root(const std::string& path);

// Whether path is (or was meant to be) one checkpoint directory rather than a root: it holds a
// MANIFEST or a first shard, or its name starts with "step_".
bool looks_like_step_dir(const std::string& path);

// *dir = path as given when it looks like a checkpoint directory (or a root holds no checkpoint at all:
// opening it then names what is missing), else the newest complete checkpoint under its root. NotFound
// when path is not a directory or its root holds no complete checkpoint.
Status resolve_checkpoint_dir(const std::string& path, std::string* dir);

}  // namespace moe

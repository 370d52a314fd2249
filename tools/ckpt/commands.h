// moe-ckpt's commands, called by the driver (tools/moe_ckpt.cpp) with their parsed command line: one
// file each (tools/ckpt/cmd_<command>.cpp; prune-experts, add-experts and upcycle share
// cmd_experts.cpp), with kXHelp the text `moe-ckpt X --help` prints.
//
// Each returns the exit status: 0 success; 1 a damaged tensor (tensors), a problem found (verify) or
// a difference (diff). Each throws InvalidArgument for a bad command line or option value and
// CheckpointError for a checkpoint it cannot use; the driver turns them into their exit statuses.
// Only the writing commands (reshard, prune-experts, add-experts, upcycle, export, import) create files, and
// only their output OUT, which must not exist.
#pragma once

#include "tools/ckpt/command_line.h"

namespace moe::ckpt {

extern const char* const kLsHelp;
int cmd_ls(const Args& args);

extern const char* const kInfoHelp;
int cmd_info(const Args& args);

extern const char* const kTensorsHelp;
int cmd_tensors(const Args& args);

extern const char* const kVerifyHelp;
int cmd_verify(const Args& args);

extern const char* const kDiffHelp;
int cmd_diff(const Args& args);

extern const char* const kExportHelp;
int cmd_export(const Args& args);

extern const char* const kImportHelp;
int cmd_import(const Args& args);

extern const char* const kReshardHelp;
int cmd_reshard(const Args& args);

extern const char* const kPruneHelp;
int cmd_prune(const Args& args);

extern const char* const kAddHelp;
int cmd_add(const Args& args);

extern const char* const kUpcycleHelp;
int cmd_upcycle(const Args& args);

}  // namespace moe::ckpt

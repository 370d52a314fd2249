// Tests of the launchers' shared code (launch/launcher/) and of the launch settings' parsers: the
// values of launch.hosts, launch.env and scheduler.time_limit, every launch check with the setting
// its message must name, the mpirun/srun commands, the Slurm and PBS scripts, and the local rank
// read from OpenMPI's and Slurm's environment (parallel/local_rank.h).
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/check.h"
#include "launch/config/launch_values.h"
#include "launch/config/train_config.h"
#include "launch/launcher/cli.h"
#include "launch/launcher/command.h"
#include "launch/launcher/job_script.h"
#include "launch/launcher/launch_plan.h"
#include "launch/trainer/device_selection.h"
#include "parallel/local_rank.h"
#include "tests/test_util.h"

namespace moe {
namespace {

using namespace test;  // NOLINT(google-build-using-namespace): the shared test helpers

namespace fs = std::filesystem;

TrainConfig config(const std::vector<std::string>& overrides) { return parse_train_config("", "test.yaml", overrides); }

const NodeCores kTwoCores{2, "--cpus"};

// ---- Values of the launch keys ---------------------------------------------------------------------

TEST(LaunchValues, HostLists) {
  std::vector<HostSlots> hosts;
  ASSERT_TRUE(parse_host_list("node1:4, node-2.x:2,n3", &hosts));
  EXPECT_EQ(hosts, (std::vector<HostSlots>{{"node1", 4}, {"node-2.x", 2}, {"n3", 1}}));
  EXPECT_TRUE(parse_host_list("", &hosts));
  EXPECT_TRUE(hosts.empty());
  for (const char* bad : {"a:0", "a:", ":2", "a:2,", "a b", "a:x", "a:-1", ",a"})
    EXPECT_FALSE(parse_host_list(bad, &hosts)) << bad;
}

TEST(LaunchValues, EnvLists) {
  std::vector<EnvSetting> env;
  ASSERT_TRUE(parse_env_list("  OPENBLAS_CORETYPE=SKYLAKEX  NCCL_DEBUG=  PATH ", &env));
  ASSERT_EQ(env.size(), 3u);
  EXPECT_EQ(env[0], (EnvSetting{"OPENBLAS_CORETYPE", "SKYLAKEX", true}));
  EXPECT_EQ(env[1], (EnvSetting{"NCCL_DEBUG", "", true}));
  EXPECT_EQ(env[2], (EnvSetting{"PATH", "", false}));
  for (const char* bad : {"1A=b", "=x", "A-B=1", "A=1 =2"}) EXPECT_FALSE(parse_env_list(bad, &env)) << bad;
}

TEST(LaunchValues, TimeLimits) {
  int64_t s = 0;
  ASSERT_TRUE(parse_time_limit("01:30:05", &s));
  EXPECT_EQ(s, 5405);
  ASSERT_TRUE(parse_time_limit("48:00:00", &s));
  EXPECT_EQ(s, 48 * 3600);
  for (const char* bad : {"", "1:30", "00:60:00", "00:00:60", "00:00:00", "1:2:3", "a:00:00", "01:30:00:00", "90min"})
    EXPECT_FALSE(parse_time_limit(bad, &s)) << bad;
}

TEST(LaunchValues, TheConfigRejectsMalformedValuesNamingTheKey) {
  auto message = [](const std::string& override_arg) { return error_message([&] { config({override_arg}); }); };
  EXPECT_CONTAINS(message("scheduler.time_limit=90min"), "scheduler.time_limit = \"90min\" is not valid", "HH:MM:SS");
  EXPECT_CONTAINS(message("launch.hosts=a:0"), "launch.hosts = \"a:0\" is not valid", "host[:slots]");
  EXPECT_CONTAINS(message("launch.env=1X=2"), "launch.env = \"1X=2\" is not valid", "NAME=value");
  EXPECT_CONTAINS(message("launch.bind=numa"), "launch.bind: expected one of none, core, socket");
  EXPECT_CONTAINS(message("launch.ranks=0"), "launch.ranks = 0 is out of range");
  EXPECT_CONTAINS(message("launch.launcher=ssh"), "launch.launcher: expected one of mpirun, srun");
}

// ---- Checks before a launch ------------------------------------------------------------------------

TEST(LaunchPlan, RanksPerNodeBeyondTheCoresNamesTheSetting) {
  EXPECT_CONTAINS(error_message([] {
                    plan_launch(config({"launch.ranks=4", "launch.ranks_per_node=4"}), kTwoCores);
                  }),
                  "launch.ranks_per_node = 4 is more ranks per node than a node has cores (2, from --cpus)",
                  "launch.oversubscribe=true");
  // All ranks on this node (ranks_per_node = 0): launch.ranks is the setting.
  EXPECT_CONTAINS(error_message([] { plan_launch(config({"launch.ranks=4"}), kTwoCores); }),
                  "launch.ranks = 4 (all on one node: launch.ranks_per_node = 0) is more ranks per node");
  // Threads count too.
  EXPECT_CONTAINS(error_message([] {
                    plan_launch(config({"launch.ranks=2", "run.threads_per_rank=2"}), kTwoCores);
                  }),
                  "x run.threads_per_rank = 2 needs 4 cores per node, more than a node has (2, from --cpus)");
  // Allowed with oversubscribe, and without a known core count.
  EXPECT_NO_THROW(plan_launch(config({"launch.ranks=4", "launch.oversubscribe=true"}), kTwoCores));
  EXPECT_NO_THROW(plan_launch(config({"launch.ranks=4"}), std::nullopt));
}

TEST(LaunchPlan, HostfileThatDoesNotExistNamesTheSetting) {
  EXPECT_CONTAINS(error_message([] {
                    plan_launch(config({"launch.ranks=2", "launch.hostfile=/nonexistent/hosts"}), kTwoCores);
                  }),
                  "launch.hostfile = '/nonexistent/hosts' does not exist");
  EXPECT_CONTAINS(error_message([] {
                    plan_launch(config({"launch.hosts=a:2", "launch.hostfile=/etc/hostname"}), kTwoCores);
                  }),
                  "launch.hosts = 'a:2' and launch.hostfile = '/etc/hostname' are both set");
  const LaunchPlan p = plan_launch(config({"launch.ranks=2", "launch.hostfile=/etc/hostname"}), kTwoCores);
  EXPECT_EQ(p.hostfile, "/etc/hostname");
}

TEST(LaunchPlan, EpMustDivideTheRanks) {
  EXPECT_CONTAINS(error_message([] {
                    plan_launch(config({"launch.ranks=2", "parallel.ep=3"}), kTwoCores);
                  }),
                  "parallel.ep = 3 does not divide launch.ranks = 2");
  EXPECT_CONTAINS(error_message([] {
                    plan_launch(config({"launch.ranks=3", "launch.oversubscribe=true"}), kTwoCores);
                  }),
                  "moe.num_experts = 8 is not divisible by launch.ranks = 3");
  EXPECT_NO_THROW(plan_launch(config({"launch.ranks=2", "parallel.ep=1"}), kTwoCores));
}

TEST(LaunchPlan, HostsAndRanksPerNodeMustAddUp) {
  EXPECT_CONTAINS(
      error_message([] {
        plan_launch(config({"launch.ranks=6", "launch.ranks_per_node=4", "moe.num_experts=12"}), std::nullopt);
      }),
      "launch.ranks = 6 is not a multiple of launch.ranks_per_node = 4");
  EXPECT_CONTAINS(error_message([] {
                    plan_launch(config({"launch.ranks=8", "launch.ranks_per_node=2", "launch.hosts=a,b"}), kTwoCores);
                  }),
                  "needs 4 hosts, but launch.hosts names 2");
  EXPECT_CONTAINS(error_message([] {
                    plan_launch(config({"launch.ranks=8", "launch.hosts=a:2,b:2"}), kTwoCores);
                  }),
                  "has 4 slots, fewer than launch.ranks = 8");
  EXPECT_CONTAINS(error_message([] {
                    plan_launch(config({"launch.launcher=srun", "launch.hosts=a"}), kTwoCores);
                  }),
                  "launch.launcher = srun runs on the nodes of the Slurm allocation");
}

// ---- Commands --------------------------------------------------------------------------------------

TrainInvocation train() { return {"/b/moe-train", "/c/tiny.yaml", {"run.steps=5"}}; }

TEST(Command, MpirunOnOneMachine) {
  const TrainConfig c = config({"launch.ranks=2"});
  CommandContext root;
  root.as_root = true;
  EXPECT_EQ(shell_line(mpirun_command(c, plan_launch(c, kTwoCores), train(), root)),
            "mpirun -np 2 --allow-run-as-root --map-by slot --bind-to core -x OMP_NUM_THREADS=1 "
            "/b/moe-train /c/tiny.yaml run.steps=5");
}

TEST(Command, MpirunOnHostsWithThreadsEnvironmentAndExtraArguments) {
  const TrainConfig c =
      config({"launch.ranks=4", "launch.ranks_per_node=2", "launch.hosts=n1:2,n2:2", "run.threads_per_rank=4",
              "launch.env=A=1 B=x/y PATH", "launch.extra_args=--mca btl tcp,self"});
  const LaunchPlan p = plan_launch(c, NodeCores{8, "--cpus"});
  EXPECT_EQ(shell_line(mpirun_command(c, p, train(), {})),
            "mpirun -np 4 --host n1:2,n2:2 --map-by ppr:2:node:PE=4 --bind-to core -x OMP_NUM_THREADS=4 -x A=1 "
            "-x B=x/y -x PATH --mca btl tcp,self /b/moe-train /c/tiny.yaml run.steps=5");
}

TEST(Command, OversubscribedRanksAreNotBound) {
  const TrainConfig c = config({"launch.ranks=4", "launch.oversubscribe=true"});
  EXPECT_CONTAINS(shell_line(mpirun_command(c, plan_launch(c, kTwoCores), train(), {})),
                  "mpirun -np 4 --oversubscribe --map-by slot --bind-to none");
}

TEST(Command, SrunInsideAnAllocation) {
  const TrainConfig c = config({"launch.ranks=4", "launch.ranks_per_node=2", "launch.launcher=srun",
                                "launch.bind=socket", "launch.env=X=1 HOME"});
  EXPECT_EQ(shell_line(launch_command(c, plan_launch(c, std::nullopt), train(), {}, 3)),
            "srun --mpi=pmix --ntasks=4 --ntasks-per-node=2 --cpus-per-task=3 --cpu-bind=sockets "
            "--export=ALL,OMP_NUM_THREADS=1,X=1 /b/moe-train /c/tiny.yaml run.steps=5");
}

TEST(Command, ShellQuotingReadsBackInAShell) {
  EXPECT_EQ(shell_quote("a/b-c_d.e:f,g=h%i@j+k"), "a/b-c_d.e:f,g=h%i@j+k");
  EXPECT_EQ(shell_quote(""), "''");
  EXPECT_EQ(shell_quote("a b"), "'a b'");
  EXPECT_EQ(shell_quote("it's $HOME"), "'it'\\''s $HOME'");
  // The shell gives back exactly the words.
  const std::vector<std::string> words = {"x y", "it's", "$HOME", "a\"b", "*", ""};
  std::string line = "printf '%s\\n'";
  for (const std::string& w : words) {
    line += ' ';
    line += shell_quote(w);
  }
  FILE* p = ::popen(line.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[256];
  size_t n = 0;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  ::pclose(p);
  EXPECT_EQ(out, "x y\nit's\n$HOME\na\"b\n*\n\n");
}

// ---- Batch jobs ------------------------------------------------------------------------------------

JobScriptInputs inputs(const JobPlan& plan, Scheduler s) {
  JobScriptInputs in;
  in.config_source = "configs/tiny.yaml";
  in.workdir = "/work";
  in.script_path = job_script_path(plan, s);
  in.train = train();
  in.as_root = false;
  return in;
}

TEST(JobPlan, NodesAndTasksComeFromLaunchOrMustAgreeWithIt) {
  JobPlan j = plan_job(config({"launch.ranks=8", "launch.ranks_per_node=4"}), Scheduler::Slurm, std::nullopt, "/w");
  EXPECT_EQ(j.nodes, 2);
  EXPECT_EQ(j.tasks_per_node, 4);
  EXPECT_EQ(j.cpus_per_task, 1);
  EXPECT_EQ(j.run_dir, "/w/runs/run");
  EXPECT_EQ(j.output, "/w/runs/run/slurm-%j.out");
  j = plan_job(config({"launch.ranks=8", "scheduler.nodes=4"}), Scheduler::Pbs, std::nullopt, "/w");
  EXPECT_EQ(j.tasks_per_node, 2);
  EXPECT_EQ(j.output, "/w/runs/run/job.out");
  EXPECT_CONTAINS(error_message([] {
                    plan_job(config({"launch.ranks=2", "scheduler.nodes=2", "scheduler.tasks_per_node=2"}),
                             Scheduler::Slurm, std::nullopt, "/w");
                  }),
                  "scheduler.nodes = 2 x scheduler.tasks_per_node = 2 gives 4 ranks, but launch.ranks = 2");
  EXPECT_CONTAINS(error_message([] {
                    plan_job(config({"launch.ranks=4", "launch.ranks_per_node=4"}), Scheduler::Slurm, kTwoCores, "/w");
                  }),
                  "launch.ranks_per_node = 4 is more ranks per node than a node has cores (2, from --cpus)");
  EXPECT_CONTAINS(error_message([] {
                    plan_job(config({"launch.ranks=2", "run.threads_per_rank=2", "scheduler.cpus_per_task=1"}),
                             Scheduler::Slurm, std::nullopt, "/w");
                  }),
                  "scheduler.cpus_per_task = 1 is less than run.threads_per_rank = 2");
  EXPECT_CONTAINS(
      error_message([] {
        plan_job(config({"launch.ranks=4", "scheduler.gpus_per_node=2"}), Scheduler::Slurm, std::nullopt, "/w");
      }),
      "more ranks per node than scheduler.gpus_per_node = 2");
  EXPECT_CONTAINS(
      error_message([] { plan_job(config({"scheduler.time_limit=00:01:00"}), Scheduler::Slurm, std::nullopt, "/w"); }),
      "scheduler.signal_seconds_before_end = 120 is not less than scheduler.time_limit = 00:01:00 (60 s)");
  EXPECT_CONTAINS(error_message([] { plan_job(config({"launch.hosts=a:2"}), Scheduler::Slurm, std::nullopt, "/w"); }),
                  "the scheduler picks the nodes");
  EXPECT_CONTAINS(error_message([] { plan_job(config({"scheduler.queue=q"}), Scheduler::Slurm, std::nullopt, "/w"); }),
                  "scheduler.queue = 'q' is for PBS");
  EXPECT_CONTAINS(
      error_message([] { plan_job(config({"scheduler.partition=p"}), Scheduler::Pbs, std::nullopt, "/w"); }),
      "scheduler.partition = 'p' is for Slurm");
  EXPECT_CONTAINS(error_message([] { plan_job(config({"launch.launcher=srun"}), Scheduler::Pbs, std::nullopt, "/w"); }),
                  "launch.launcher = srun needs Slurm");
}

TEST(JobScript, SlurmScriptHasTheDirectivesTheSignalForwardingAndTheRequeue) {
  const TrainConfig c = config({"run.name=exp", "launch.ranks=4", "launch.ranks_per_node=2",
                                "scheduler.gpus_per_node=2", "scheduler.partition=gpu", "scheduler.account=proj",
                                "scheduler.time_limit=02:30:00", "scheduler.error=err.txt"});
  const JobPlan j = plan_job(c, Scheduler::Slurm, std::nullopt, "/work");
  const std::string s = job_script(c, j, Scheduler::Slurm, inputs(j, Scheduler::Slurm));
  EXPECT_EQ(s.rfind("#!/bin/bash\n", 0), 0u);
  EXPECT_CONTAINS(
      s, "#SBATCH --job-name=exp\n", "#SBATCH --nodes=2\n", "#SBATCH --ntasks-per-node=2\n",
      "#SBATCH --cpus-per-task=1\n", "#SBATCH --gres=gpu:2\n", "#SBATCH --time=02:30:00\n", "#SBATCH --partition=gpu\n",
      "#SBATCH --account=proj\n", "#SBATCH --output=/work/runs/exp/slurm-%j.out\n", "#SBATCH --error=/work/err.txt\n",
      "#SBATCH --open-mode=append\n", "#SBATCH --signal=B:USR1@120\n", "#SBATCH --requeue\n", "cd /work || exit 1\n",
      "trap 'stop USR1' USR1\n", "kill -USR1 \"$launcher_pid\"", "mpirun -np 4 \\\n    --map-by ppr:2:node \\\n",
      "/b/moe-train /c/tiny.yaml run.steps=5 checkpoint.resume=auto &\n",
      "scontrol requeue \"$SLURM_JOB_ID\"\n");
  // Inside the allocation mpirun takes Slurm's nodes: no host list.
  EXPECT_EQ(s.find("--host"), std::string::npos);
  EXPECT_EQ(s.find("--allow-run-as-root"), std::string::npos);
  EXPECT_EQ(s.find("rm -f"), std::string::npos);  // moe-train itself removes DONE when it resumes the run

  const TrainConfig c2 = config({"scheduler.requeue=false", "scheduler.signal_seconds_before_end=0"});
  const JobPlan j2 = plan_job(c2, Scheduler::Slurm, std::nullopt, "/work");
  const std::string s2 = job_script(c2, j2, Scheduler::Slurm, inputs(j2, Scheduler::Slurm));
  EXPECT_CONTAINS(s2, "#SBATCH --no-requeue\n", "submit again to resume");
  EXPECT_EQ(s2.find("--signal"), std::string::npos);
  EXPECT_EQ(s2.find("scontrol requeue"), std::string::npos);
}

TEST(JobScript, PbsScriptSelectsNodesAndUsesTheNodefile) {
  const TrainConfig c = config({"run.name=exp", "launch.ranks=4", "launch.ranks_per_node=2", "run.threads_per_rank=2",
                                "scheduler.gpus_per_node=2", "scheduler.queue=workq", "scheduler.account=proj"});
  const JobPlan j = plan_job(c, Scheduler::Pbs, std::nullopt, "/work");
  const std::string s = job_script(c, j, Scheduler::Pbs, inputs(j, Scheduler::Pbs));
  EXPECT_CONTAINS(s, "#PBS -N exp\n", "#PBS -l select=2:ncpus=4:mpiprocs=2:ompthreads=2:ngpus=2\n",
                  "#PBS -l place=scatter\n", "#PBS -l walltime=01:00:00\n", "#PBS -q workq\n", "#PBS -A proj\n",
                  "#PBS -o /work/runs/exp/job.out\n", "#PBS -j oe\n", "#PBS -r y\n", "--hostfile \"$PBS_NODEFILE\"",
                  "--map-by ppr:2:node:PE=2", "qsub /work/runs/exp/job.pbs\n", "trap 'stop TERM' TERM\n");
  EXPECT_EQ(s.find("#SBATCH"), std::string::npos);
}

// ---- Command line ----------------------------------------------------------------------------------

TEST(LauncherArgs, OptionsAnywhereAndMessagesNamingTheArgument) {
  LauncherArgs a = parse_launcher_args({"c.yaml", "--dry-run", "a.b=1", "--cpus=4", "--scheduler", "pbs"}, true);
  EXPECT_EQ(a.config, "c.yaml");
  EXPECT_TRUE(a.dry_run);
  EXPECT_EQ(a.cpus, 4);
  EXPECT_EQ(a.scheduler, "pbs");
  EXPECT_EQ(a.overrides, (std::vector<std::string>{"a.b=1"}));
  EXPECT_TRUE(parse_launcher_args({"--bogus", "-h"}, false).help);
  EXPECT_CONTAINS(error_message([] {
                    parse_launcher_args({"c.yaml", "--bogus"}, false);
                  }),
                  "unknown option '--bogus'; accepted: --help, --dry-run, --cpus N");
  EXPECT_CONTAINS(error_message([] {
                    parse_launcher_args({"c.yaml", "--scheduler", "slurm"}, false);
                  }),
                  "unknown option '--scheduler'");
  EXPECT_CONTAINS(error_message([] { parse_launcher_args({"c.yaml", "--cpus", "0"}, false); }),
                  "--cpus 0: out of range; expected an integer in [1, 2147483647]");
  EXPECT_CONTAINS(error_message([] { parse_launcher_args({"c.yaml", "--cpus=4294967298"}, false); }),
                  "--cpus 4294967298: out of range; expected an integer in [1, 2147483647]");
  EXPECT_CONTAINS(error_message([] { parse_launcher_args({"c.yaml", "--cpus"}, false); }), "--cpus needs a value");
  EXPECT_CONTAINS(error_message([] { parse_launcher_args({"--dry-run"}, false); }), "missing CONFIG.yaml");
  EXPECT_CONTAINS(error_message([] {
                    parse_launcher_args({"c.yaml", "d.yaml"}, false);
                  }),
                  "'d.yaml' is not a config override");
}

// ---- Local rank from the environment ---------------------------------------------------------------

std::function<const char*(const char*)> env(const std::map<std::string, std::string>& vars) {
  return [vars](const char* name) -> const char* {
    auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  };
}

TEST(LocalRank, OpenMpiFirstThenSlurm) {
  const std::map<std::string, std::string> ompi = {{"OMPI_COMM_WORLD_RANK", "5"},
                                                   {"OMPI_COMM_WORLD_SIZE", "8"},
                                                   {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                                                   {"OMPI_COMM_WORLD_LOCAL_SIZE", "4"}};
  std::optional<LocalPlacement> p = local_placement_from_environment(5, 8, env(ompi));
  ASSERT_TRUE(p);
  EXPECT_EQ(p->local_rank, 1);
  EXPECT_EQ(p->local_size, 4);
  EXPECT_EQ(p->node, -1);  // OpenMPI does not say
  EXPECT_EQ(p->source, "OMPI_COMM_WORLD_LOCAL_RANK");

  const std::map<std::string, std::string> slurm = {{"SLURM_PROCID", "4"},
                                                    {"SLURM_NTASKS", "5"},
                                                    {"SLURM_LOCALID", "0"},
                                                    {"SLURM_NODEID", "2"},
                                                    {"SLURM_STEP_TASKS_PER_NODE", "2(x2),1"}};
  p = local_placement_from_environment(4, 5, env(slurm));
  ASSERT_TRUE(p);
  EXPECT_EQ(p->local_rank, 0);
  EXPECT_EQ(p->local_size, 1);
  EXPECT_EQ(p->node, 2);
  EXPECT_EQ(p->source, "SLURM_LOCALID");

  // Both: OpenMPI's wins (mpirun inside a Slurm job).
  std::map<std::string, std::string> both = slurm;
  both.insert(ompi.begin(), ompi.end());
  p = local_placement_from_environment(5, 8, env(both));
  ASSERT_TRUE(p);
  EXPECT_EQ(p->source, "OMPI_COMM_WORLD_LOCAL_RANK");
}

TEST(LocalRank, AnEnvironmentOfAnotherJobIsIgnored) {
  // The batch step of a Slurm job run with mpirun: SLURM_PROCID 0 of 1 on every rank.
  const std::map<std::string, std::string> batch = {{"SLURM_PROCID", "0"},
                                                    {"SLURM_NTASKS", "1"},
                                                    {"SLURM_LOCALID", "0"},
                                                    {"SLURM_NODEID", "0"},
                                                    {"SLURM_TASKS_PER_NODE", "2"}};
  EXPECT_FALSE(local_placement_from_environment(1, 2, env(batch)));
  EXPECT_FALSE(local_placement_from_environment(0, 1, env({})));
  EXPECT_FALSE(local_placement_from_environment(0, 2,
                                                env({{"OMPI_COMM_WORLD_RANK", "0"},
                                                     {"OMPI_COMM_WORLD_SIZE", "2"},
                                                     {"OMPI_COMM_WORLD_LOCAL_RANK", "x"},
                                                     {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}})));
  EXPECT_FALSE(local_placement_from_environment(0, 2,
                                                env({{"SLURM_PROCID", "0"},
                                                     {"SLURM_NTASKS", "2"},
                                                     {"SLURM_LOCALID", "0"},
                                                     {"SLURM_NODEID", "0"},
                                                     {"SLURM_TASKS_PER_NODE", "2(x"}})));
}

TEST(LocalRank, OneGpuPerLocalRank) {
  EXPECT_EQ(gpu_for_local_rank(0, 0), -1);  // the CPU build: no GPU
  EXPECT_EQ(gpu_for_local_rank(3, 0), -1);
  EXPECT_EQ(gpu_for_local_rank(0, 4), 0);
  EXPECT_EQ(gpu_for_local_rank(3, 4), 3);
  EXPECT_CONTAINS(error_message([] { gpu_for_local_rank(4, 4); }), "local rank 4 has no GPU of its own", "4 GPU(s)");
}

// What each rank checks before a run starts (launch/trainer/device_selection.h), for every build and
// machine: the first thing missing is named, with the rank and host where the machine lacks it.
TEST(DeviceSelection, RefusalNamesWhatTheBuildOrTheMachineLacks) {
  TrainConfig cpu, cuda, nccl;
  cuda.run.device = nccl.run.device = Device::CUDA;
  nccl.parallel.backend = DataBackend::NCCL;
  RankHardware bare;  // no CUDA, no NCCL, no GPU
  bare.rank = 3;
  bare.host = "node7";
  RankHardware gpus = bare;
  gpus.cuda_built = gpus.nccl_built = true;
  gpus.gpu_count = 2;
  gpus.local_rank = 1;

  EXPECT_EQ(device_refusal(cpu, bare), "");
  EXPECT_EQ(device_refusal(cpu, gpus), "");
  EXPECT_CONTAINS(device_refusal(cuda, bare),
                  "run.device = cuda, but this build has no CUDA backend (built without the CUDA toolkit)");
  RankHardware no_device = gpus;
  no_device.gpu_count = 0;
  EXPECT_CONTAINS(device_refusal(cuda, no_device), "run.device = cuda, but rank 3 on host node7 sees no CUDA device",
                  "run.device = cpu");
  RankHardware crowded = gpus;
  crowded.local_rank = 2;  // a third rank on a node with 2 GPUs
  EXPECT_CONTAINS(device_refusal(cuda, crowded), "rank 3 on host node7", "local rank 2 has no GPU of its own");
  RankHardware no_nccl = gpus;
  no_nccl.nccl_built = false;
  EXPECT_CONTAINS(device_refusal(nccl, no_nccl), "parallel.backend = nccl, but this build has no NCCL",
                  "parallel.backend = mpi");
  // Everything present: accepted.
  EXPECT_EQ(device_refusal(cuda, gpus), "");
  EXPECT_EQ(device_refusal(nccl, gpus), "");
  // bf16 on a CPU without bfloat16 products: refused on the CPU, not on a GPU (cuBLAS computes there).
  TrainConfig cpu_bf16 = cpu, cuda_bf16 = cuda;
  cpu_bf16.model.precision = cuda_bf16.model.precision = Precision::BF16;
  EXPECT_CONTAINS(device_refusal(cpu_bf16, bare), "model.precision = bf16, but rank 3 on host node7 has a CPU without "
                  "bfloat16 matrix products", "accepted: model.precision = fp32");
  EXPECT_EQ(device_refusal(cuda_bf16, gpus), "");
  RankHardware avx512 = bare;
  avx512.cpu_bf16_matmul = true;
  EXPECT_EQ(device_refusal(cpu_bf16, avx512), "");
}

}  // namespace
}  // namespace moe

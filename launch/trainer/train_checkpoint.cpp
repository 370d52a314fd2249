// Saving and loading moe-train's state (launch/trainer/train_checkpoint.h).
#include "launch/trainer/train_checkpoint.h"

#include <map>

#include "core/check.h"
#include "core/checkpoint/checkpoint.h"
#include "core/parameter_names.h"
#include "parallel/checkpoint_save.h"

namespace moe {

namespace {

// Expert e's slice of a stacked (E_local, ...) tensor, without the expert dimension.
Tensor expert_slice(const Tensor& t, int64_t e) {
  Shape shape(t.shape().begin() + 1, t.shape().end());
  return t.rows(e, e + 1).reshape(shape);
}

// The parameter's kind decides how its optimizer state is split, like the parameter itself.
ParamKind state_kind(const std::string& state_name, const std::map<std::string, ParamKind>& kinds) {
  auto it = kinds.find(parameter_of(state_name));
  MOE_ASSERT(it != kinds.end(), "optimizer state names end with a parameter name");
  return it->second;
}

struct NamedTensor {
  std::string name;
  Tensor tensor;
  ParamKind kind;
};

// Every tensor of the run's state, in a fixed order: parameters, optimizer state (none when optimizer is
// null: the model alone), selection biases.
std::vector<NamedTensor> state_tensors(TransformerLM& model, ParameterRegistry& registry, Optimizer* optimizer) {
  std::vector<NamedTensor> out;
  std::map<std::string, ParamKind> kinds;
  for (Parameter& p : registry.all()) {
    out.push_back({p.name, p.value, p.kind});
    kinds[p.name] = p.kind;
  }
  if (optimizer != nullptr)
    for (auto& [name, t] : optimizer->state()) out.push_back({name, t, state_kind(name, kinds)});
  for (int64_t i = 0; i < model.config().n_layers; ++i)
    if (MoELayer* m = model.moe_layer(i))
      out.push_back({names::layer_tensor(i, names::kMoE, names::kSelectionBias), m->selection_bias, ParamKind::Dense});
  return out;
}

}  // namespace

std::string save_training_checkpoint(const TrainConfig& cfg, const std::string& run_id, const LoopState& loop,
                                     TransformerLM& model, ParameterRegistry& registry, Optimizer& optimizer,
                                     const ProcessGroups& groups, Communicator& world, bool test_kill_midway) {
  const ExpertLayout& L = groups.layout;
  std::vector<CheckpointTensor> mine;
  int64_t dense_index = 0;
  for (NamedTensor& t : state_tensors(model, registry, &optimizer)) {
    if (t.kind == ParamKind::Dense) {
      // Replicated everywhere: each dense tensor is written once, by ranks in turn.
      if (dense_index++ % L.world_size == L.world_rank) mine.push_back({t.name, -1, t.tensor.to(Device::CPU)});
    } else if (L.world_rank < L.ep) {
      // The first expert-parallel group holds every expert exactly once.
      for (int64_t e = 0; e < L.experts_per_rank; ++e)
        mine.push_back({t.name, L.first_expert + e, expert_slice(t.tensor, e).to(Device::CPU)});
    }
  }

  SaveRequest req;
  req.root = cfg.checkpoint.dir;
  req.step = loop.step;
  req.keep = static_cast<int>(cfg.checkpoint.keep);
  req.test_kill_midway = test_kill_midway;
  checkpoint::Manifest& h = req.header;
  h.set_run_id(run_id);
  h.set_config_yaml(to_yaml(cfg));
  checkpoint::Layout* layout = h.mutable_layout();
  layout->set_world_size(L.world_size);
  layout->set_ep(L.ep);
  layout->set_num_experts(L.num_experts);
  layout->set_experts_per_rank(L.experts_per_rank);
  layout->set_placement("rank r holds experts [(r % ep) * E/ep, (r % ep + 1) * E/ep)");
  checkpoint::TrainingState* s = h.mutable_state();
  s->set_optimizer_steps(optimizer.steps_taken());
  s->set_loader_epoch(loop.loader.epoch);
  s->set_loader_sequences_done(loop.loader.step_in_epoch * static_cast<uint64_t>(L.world_size * cfg.data.batch_size));
  for (MoELayer* m : model.moe_layers()) s->add_moe_layer_calls(m->calls());
  s->set_skipped_steps(loop.skipped_steps);
  s->set_consecutive_nonfinite(loop.consecutive_nonfinite);
  for (double v : loop.shared_sums) s->add_sums(v);
  for (int64_t v : loop.shared_counters) s->add_counters(v);
  int64_t layer = 0;
  for (int64_t i = 0; i < model.config().n_layers; ++i) {
    if (model.moe_layer(i) == nullptr) continue;
    checkpoint::ExpertUsage* u = h.add_expert_usage();
    u->set_layer(i);
    for (int64_t c : loop.expert_usage.at(layer++)) u->add_tokens(c);
  }
  checkpoint::RankState rank_state;
  for (int64_t v : loop.rank_counters) rank_state.add_counters(v);
  return save_checkpoint(req, mine, rank_state, world);
}

std::map<std::string, Tensor> gather_training_state(TransformerLM& model, ParameterRegistry& registry,
                                                    Optimizer& optimizer, const ProcessGroups& groups) {
  const ExpertLayout& L = groups.layout;
  std::map<std::string, Tensor> full;
  for (NamedTensor& t : state_tensors(model, registry, &optimizer)) {
    const Tensor mine = t.tensor.to(Device::CPU);
    if (t.kind == ParamKind::Dense) {
      full[t.name] = mine;
      continue;
    }
    Shape shape = mine.shape();
    shape[0] = L.num_experts;
    Tensor all = Tensor::empty(shape, mine.dtype());
    groups.expert_parallel.control->all_gather(mine.f32(), all.f32(), mine.nbytes());
    full[t.name] = all;
  }
  return full;
}

void scatter_training_state(const std::map<std::string, Tensor>& full, TransformerLM& model,
                            ParameterRegistry& registry, Optimizer& optimizer, const ProcessGroups& groups) {
  const ExpertLayout& L = groups.layout;
  for (NamedTensor& t : state_tensors(model, registry, &optimizer)) {
    auto it = full.find(t.name);
    MOE_ASSERT(it != full.end(), "the new model's state has the old one's names");
    const Tensor& from = it->second;
    t.tensor.copy_from(t.kind == ParamKind::Dense ? from
                                                  : from.rows(L.first_expert, L.first_expert + L.experts_per_rank));
  }
}

namespace {

// Reads every tensor of `tensors` that this rank holds (each dense one, its experts' slices of the
// expert ones) from the checkpoint `reader` opened at `dir`; throws as load_training_checkpoint.
void load_state_tensors(const CheckpointReader& reader, const std::string& dir, std::vector<NamedTensor> tensors,
                        const ExpertLayout& L) {
  MOE_REQUIRE(reader.manifest().layout().num_experts() == L.num_experts, "checkpoint '", dir, "' has ",
              reader.manifest().layout().num_experts(), " experts per MoE layer but moe.num_experts = ",
              L.num_experts);
  auto load = [&](const std::string& name, int64_t expert, Tensor& into) {
    const checkpoint::TensorEntry* e = reader.find(name, expert);
    MOE_REQUIRE(e != nullptr, "checkpoint '", dir, "' has no tensor '", name, "'",
                expert >= 0 ? " for expert " + std::to_string(expert) : std::string(),
                name.rfind("adamw.", 0) == 0 || name.rfind("sgd.", 0) == 0
                    ? " (was it written with another optimizer? optim.name must match)"
                    : " (a model of another shape?)");
    Status s = reader.read(*e, into);
    if (s.code() == Status::Code::InvalidArgument) throw InvalidArgument("cannot load checkpoint: " + s.to_string());
    if (!s.ok()) throw DamagedCheckpoint("cannot load checkpoint: " + s.to_string());
  };
  for (NamedTensor& t : tensors) {
    if (t.kind == ParamKind::Dense) {
      load(t.name, -1, t.tensor);
    } else {
      for (int64_t e = 0; e < L.experts_per_rank; ++e) {
        Tensor slice = expert_slice(t.tensor, e);
        load(t.name, L.first_expert + e, slice);
      }
    }
  }
}

std::unique_ptr<CheckpointReader> open_for_loading(const std::string& dir) {
  std::unique_ptr<CheckpointReader> reader;
  Status st = CheckpointReader::open(dir, &reader);
  if (!st.ok()) throw DamagedCheckpoint("cannot load checkpoint: " + st.to_string());
  return reader;
}

}  // namespace

void load_model_weights(const std::string& dir, TransformerLM& model, ParameterRegistry& registry,
                        const ProcessGroups& groups) {
  load_state_tensors(*open_for_loading(dir), dir, state_tensors(model, registry, nullptr), groups.layout);
}

std::string load_training_checkpoint(const std::string& dir, const TrainConfig& cfg, TransformerLM& model,
                                     ParameterRegistry& registry, Optimizer& optimizer, const ProcessGroups& groups,
                                     int64_t steps_per_epoch, LoopState* loop) {
  std::unique_ptr<CheckpointReader> reader = open_for_loading(dir);
  const checkpoint::Manifest& m = reader->manifest();
  const ExpertLayout& L = groups.layout;
  load_state_tensors(*reader, dir, state_tensors(model, registry, &optimizer), L);

  const checkpoint::TrainingState& s = m.state();
  optimizer.set_steps_taken(s.optimizer_steps());
  std::vector<MoELayer*> layers = model.moe_layers();
  MOE_REQUIRE(static_cast<size_t>(s.moe_layer_calls_size()) == layers.size(), "checkpoint '", dir, "' has ",
              s.moe_layer_calls_size(), " MoE layers, this model ", layers.size());
  for (size_t i = 0; i < layers.size(); ++i) layers[i]->set_calls(s.moe_layer_calls(i));

  loop->step = m.step();
  const uint64_t global_batch = static_cast<uint64_t>(L.world_size * cfg.data.batch_size);
  MOE_REQUIRE(s.loader_sequences_done() % global_batch == 0, "checkpoint '", dir, "' stopped after ",
              s.loader_sequences_done(), " sequences of its data epoch, which is not a whole number of this run's "
              "global batches (", L.world_size, " ranks x data.batch_size ", cfg.data.batch_size,
              "); choose a batch size whose global batch divides it");
  loop->loader.epoch = s.loader_epoch();
  loop->loader.step_in_epoch = s.loader_sequences_done() / global_batch;
  if (static_cast<int64_t>(loop->loader.step_in_epoch) >= steps_per_epoch) {
    loop->loader.epoch += 1;  // the saved run's epoch was longer (smaller global batch): start the next one
    loop->loader.step_in_epoch = 0;
  }
  loop->skipped_steps = s.skipped_steps();
  loop->consecutive_nonfinite = s.consecutive_nonfinite();
  loop->shared_sums.assign(s.sums().begin(), s.sums().end());
  loop->shared_counters.assign(s.counters().begin(), s.counters().end());
  loop->rank_counters.clear();
  if (m.layout().world_size() == L.world_size)
    for (const auto& rs : m.rank_states())
      if (rs.rank() == L.world_rank) loop->rank_counters.assign(rs.counters().begin(), rs.counters().end());
  // check_manifest: one usage row per MoE layer (as many as moe_layer_calls), num_experts counts each.
  loop->expert_usage.clear();
  for (int64_t i = 0; i < model.config().n_layers; ++i) {
    if (model.moe_layer(i) == nullptr) continue;
    const checkpoint::ExpertUsage& u = m.expert_usage(static_cast<int>(loop->expert_usage.size()));
    MOE_REQUIRE(u.layer() == i, "checkpoint '", dir, "' records the expert usage (expert_usage.layer) of layer ",
                u.layer(), " where this model's next MoE layer is ", i);
    loop->expert_usage.emplace_back(u.tokens().begin(), u.tokens().end());
  }
  return m.run_id();
}

}  // namespace moe

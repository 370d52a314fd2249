// Building and taking apart parameter names (core/parameter_names.h).
#include "core/parameter_names.h"

#include <charconv>

namespace moe::names {

namespace {

constexpr std::string_view kLayers = "layers.";

}  // namespace

std::string layer_part(int64_t layer, std::string_view part) {
  std::string name(kLayers);
  name += std::to_string(layer);
  name += '.';
  name += part;
  return name;
}

std::string tensor_name(std::string_view prefix, std::string_view leaf) {
  std::string name(prefix);
  name += '.';
  name += leaf;
  return name;
}

std::string layer_tensor(int64_t layer, std::string_view part, std::string_view leaf) {
  return tensor_name(layer_part(layer, part), leaf);
}

bool parse_layer_tensor(std::string_view name, LayerTensorName* out) {
  if (!name.starts_with(kLayers)) return false;
  name.remove_prefix(kLayers.size());
  int64_t layer = -1;
  const auto [end, ec] = std::from_chars(name.data(), name.data() + name.size(), layer);
  if (ec != std::errc() || end == name.data() || layer < 0 || end == name.data() + name.size() || *end != '.')
    return false;
  name.remove_prefix(static_cast<size_t>(end - name.data()) + 1);
  const size_t dot = name.find('.');
  if (dot == std::string_view::npos || dot == 0 || dot + 1 == name.size()) return false;
  out->layer = layer;
  out->part = std::string(name.substr(0, dot));
  out->leaf = std::string(name.substr(dot + 1));
  return true;
}

}  // namespace moe::names

// TensorBoard event file writer (launch/trainer/tensorboard_writer.h).
#include "launch/trainer/tensorboard_writer.h"

#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "core/crc32c.h"
#include "launch/trainer/tensorboard_event.pb.h"

namespace moe {

namespace {
double wall_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}
}  // namespace

TensorBoardWriter::TensorBoardWriter(const std::string& dir, LogWrites& writes) : writes_(writes) {
  if (!writes_.ok()) return;
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    writes_.fail(dir, ec.value());
    return;
  }
  char host[256] = "localhost";
  gethostname(host, sizeof host - 1);
  const std::string base =
      dir + "/events.out.tfevents." + std::to_string(static_cast<int64_t>(wall_seconds())) + "." + host;
  path_ = base;
  for (int n = 1; (file_ = std::fopen(path_.c_str(), "wbx")) == nullptr && errno == EEXIST; ++n)
    path_ = base + "." + std::to_string(n);
  if (file_ == nullptr) {
    writes_.fail(path_, errno);
    return;
  }
  tensorboard::Event first;
  first.set_wall_time(wall_seconds());
  first.set_file_version("brain.Event:2");
  write_record(first.SerializeAsString());
  flush();
}

TensorBoardWriter::~TensorBoardWriter() {
  if (file_ != nullptr) std::fclose(file_);
}

void TensorBoardWriter::add_scalars(int64_t step, const std::vector<std::pair<std::string, float>>& scalars) {
  tensorboard::Event event;
  event.set_wall_time(wall_seconds());
  event.set_step(step);
  tensorboard::Summary* summary = event.mutable_summary();
  for (const auto& [tag, value] : scalars) {
    tensorboard::SummaryValue* v = summary->add_value();
    v->set_tag(tag);
    v->set_simple_value(value);
  }
  write_record(event.SerializeAsString());
}

void TensorBoardWriter::add_text(int64_t step, const std::string& tag, const std::string& text) {
  tensorboard::Event event;
  event.set_wall_time(wall_seconds());
  event.set_step(step);
  tensorboard::SummaryValue* v = event.mutable_summary()->add_value();
  v->set_tag(tag);
  v->mutable_metadata()->mutable_plugin_data()->set_plugin_name("text");
  tensorboard::Tensor* t = v->mutable_tensor();
  t->set_dtype(7);  // DT_STRING
  t->mutable_tensor_shape();  // a scalar: no dims, but the shape is present as TensorBoard writes it
  t->add_string_val(text);
  write_record(event.SerializeAsString());
}

void TensorBoardWriter::write_record(const std::string& bytes) {
  unsigned char header[12];
  const uint64_t length = bytes.size();
  for (int i = 0; i < 8; ++i) header[i] = static_cast<unsigned char>(length >> (8 * i));
  const uint32_t length_crc = crc32c_masked(crc32c(header, 8));
  for (int i = 0; i < 4; ++i) header[8 + i] = static_cast<unsigned char>(length_crc >> (8 * i));
  unsigned char footer[4];
  const uint32_t data_crc = crc32c_masked(crc32c(bytes.data(), bytes.size()));
  for (int i = 0; i < 4; ++i) footer[i] = static_cast<unsigned char>(data_crc >> (8 * i));
  if (file_ == nullptr || !writes_.ok()) return;
  const bool ok = std::fwrite(header, 1, 12, file_) == 12 &&
                  std::fwrite(bytes.data(), 1, bytes.size(), file_) == bytes.size() &&
                  std::fwrite(footer, 1, 4, file_) == 4;
  if (!ok) writes_.fail(path_, errno);
}

void TensorBoardWriter::flush() {
  if (file_ != nullptr && writes_.ok() && std::fflush(file_) != 0) writes_.fail(path_, errno);
}

namespace {

uint64_t read_le(const unsigned char* p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = v << 8 | p[i];
  return v;
}

// The length of the prefix of an event file to keep: its sound records up to the first of a step
// after last_step.
uint64_t kept_prefix(const std::string& data, int64_t last_step) {
  const auto* p = reinterpret_cast<const unsigned char*>(data.data());
  uint64_t at = 0;
  while (data.size() - at >= 16) {  // a record is at least its 12-byte header and 4-byte footer
    const uint64_t length = read_le(p + at, 8);
    if (read_le(p + at + 8, 4) != crc32c_masked(crc32c(p + at, 8)) || length > data.size() - at - 16) break;
    const uint64_t body = at + 12;
    tensorboard::Event event;
    if (read_le(p + body + length, 4) != crc32c_masked(crc32c(p + body, length)) ||
        !event.ParseFromArray(p + body, static_cast<int>(length)) || event.step() > last_step)
      break;
    at = body + length + 4;
  }
  return at;
}

}  // namespace

void cut_back_event_files(const std::string& dir, int64_t last_step, LogWrites& writes) {
  std::error_code ec;
  if (!writes.ok() || !std::filesystem::is_directory(dir, ec)) return;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string path = entry.path().string();
    if (!entry.is_regular_file() || entry.path().filename().string().rfind("events.out.tfevents.", 0) != 0) continue;
    std::ifstream in(path, std::ios::binary);
    const std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (in.bad()) return writes.fail(path, EIO);
    const uint64_t keep = kept_prefix(data, last_step);
    if (keep < data.size() && ::truncate(path.c_str(), static_cast<off_t>(keep)) != 0) return writes.fail(path, errno);
  }
  if (ec) writes.fail(dir, ec.value());
}

}  // namespace moe

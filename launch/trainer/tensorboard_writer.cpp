// TensorBoard event file writer (launch/trainer/tensorboard_writer.h).
#include "launch/trainer/tensorboard_writer.h"

#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>

#include "core/check.h"
#include "core/crc32c.h"
#include "launch/trainer/tensorboard_event.pb.h"

namespace moe {

namespace {
double wall_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}
}  // namespace

TensorBoardWriter::TensorBoardWriter(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  MOE_REQUIRE(!ec, "cannot create the TensorBoard directory '", dir, "': ", ec.message());
  char host[256] = "localhost";
  gethostname(host, sizeof host - 1);
  path_ = dir + "/events.out.tfevents." + std::to_string(static_cast<int64_t>(wall_seconds())) + "." + host;
  file_ = std::fopen(path_.c_str(), "wb");
  MOE_REQUIRE(file_ != nullptr, "cannot open '", path_, "' for writing: ", std::strerror(errno));
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

void TensorBoardWriter::write_record(const std::string& bytes) {
  unsigned char header[12];
  const uint64_t length = bytes.size();
  for (int i = 0; i < 8; ++i) header[i] = static_cast<unsigned char>(length >> (8 * i));
  const uint32_t length_crc = crc32c_masked(crc32c(header, 8));
  for (int i = 0; i < 4; ++i) header[8 + i] = static_cast<unsigned char>(length_crc >> (8 * i));
  unsigned char footer[4];
  const uint32_t data_crc = crc32c_masked(crc32c(bytes.data(), bytes.size()));
  for (int i = 0; i < 4; ++i) footer[i] = static_cast<unsigned char>(data_crc >> (8 * i));
  const bool ok = std::fwrite(header, 1, 12, file_) == 12 &&
                  std::fwrite(bytes.data(), 1, bytes.size(), file_) == bytes.size() &&
                  std::fwrite(footer, 1, 4, file_) == 4;
  MOE_REQUIRE(ok, "writing '", path_, "' failed: ", std::strerror(errno));
}

void TensorBoardWriter::flush() { std::fflush(file_); }

}  // namespace moe

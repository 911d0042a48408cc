#include "common/tensorboard/event_writer.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/util/crc32c.h"
#include "tensorboard/event.pb.h"

namespace mal::tensorboard {

namespace {

namespace fs = std::filesystem;

double Now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

void PutLittleEndian(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

}  // namespace

absl::StatusOr<std::unique_ptr<EventWriter>> EventWriter::Create(const std::string& dir,
                                                                 bool atomic) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::PermissionDeniedError(absl::StrCat(dir, ": cannot create: ", ec.message()));
  char host[256] = "localhost";
  ::gethostname(host, sizeof host - 1);
  const std::string path =
      absl::StrCat(dir, "/events.out.tfevents.", static_cast<int64_t>(Now()), ".", host, ".mal");
  const std::string tmp = atomic ? absl::StrCat(dir, "/.tmp-", ::getpid(), "-events") : "";
  std::FILE* file = std::fopen((atomic ? tmp : path).c_str(), atomic ? "wb" : "ab");
  if (file == nullptr) {
    return absl::PermissionDeniedError(absl::StrCat(atomic ? tmp : path, ": cannot write"));
  }
  std::unique_ptr<EventWriter> writer(new EventWriter(path, tmp, file));
  ::tensorboard::Event first;
  first.set_wall_time(Now());
  first.set_file_version("brain.Event:2");
  if (absl::Status s = writer->Write(first.SerializeAsString()); !s.ok()) return s;
  return writer;
}

EventWriter::~EventWriter() {
  if (tmp_.empty() || file_ == nullptr) {
    (void)Close();
    return;
  }
  // Never Closed: what was written is incomplete, and an atomic writer keeps nothing of it.
  std::fclose(file_);
  std::error_code ec;
  fs::remove(tmp_, ec);
}

absl::Status EventWriter::Write(const std::string& data) {
  if (file_ == nullptr) return absl::FailedPreconditionError(absl::StrCat(path_, ": closed"));
  std::string record;
  std::string length;
  PutLittleEndian(length, data.size(), 8);
  record += length;
  PutLittleEndian(record, MaskedCrc32c(length), 4);
  record += data;
  PutLittleEndian(record, MaskedCrc32c(data), 4);
  if (std::fwrite(record.data(), 1, record.size(), file_) != record.size()) {
    return absl::InternalError(absl::StrCat(tmp_.empty() ? path_ : tmp_, ": write failed"));
  }
  return absl::OkStatus();
}

absl::Status EventWriter::AddScalar(const std::string& tag, int64_t step, double value,
                                    double wall_time) {
  ::tensorboard::Event e;
  e.set_wall_time(wall_time > 0 ? wall_time : Now());
  e.set_step(step);
  auto* v = e.mutable_summary()->add_value();
  v->set_tag(tag);
  v->set_simple_value(static_cast<float>(value));
  return Write(e.SerializeAsString());
}

absl::Status EventWriter::AddHistogram(const std::string& tag, int64_t step,
                                       const std::vector<double>& values, int buckets,
                                       double wall_time) {
  if (values.empty()) return absl::OkStatus();
  ::tensorboard::Event e;
  e.set_wall_time(wall_time > 0 ? wall_time : Now());
  e.set_step(step);
  auto* v = e.mutable_summary()->add_value();
  v->set_tag(tag);
  ::tensorboard::HistogramProto* h = v->mutable_histo();
  const auto [lo, hi] = std::minmax_element(values.begin(), values.end());
  double sum = 0, squares = 0;
  for (double x : values) {
    sum += x;
    squares += x * x;
  }
  h->set_min(*lo);
  h->set_max(*hi);
  h->set_num(static_cast<double>(values.size()));
  h->set_sum(sum);
  h->set_sum_squares(squares);
  buckets = std::max(1, buckets);
  const double width = (*hi - *lo) / buckets;
  std::vector<double> counts(buckets, 0);
  for (double x : values) {
    const int b = width > 0 ? std::min(buckets - 1, static_cast<int>((x - *lo) / width)) : 0;
    counts[b] += 1;
  }
  for (int b = 0; b < buckets; ++b) {
    h->add_bucket_limit(b + 1 == buckets ? *hi : *lo + width * (b + 1));
    h->add_bucket(counts[b]);
  }
  return Write(e.SerializeAsString());
}

absl::Status EventWriter::Flush() {
  if (file_ != nullptr && std::fflush(file_) != 0) {
    return absl::InternalError(absl::StrCat(path_, ": flush failed"));
  }
  return absl::OkStatus();
}

absl::Status EventWriter::Close() {
  if (file_ == nullptr) return absl::OkStatus();
  const bool ok = std::fflush(file_) == 0 && ::fsync(::fileno(file_)) == 0;
  std::fclose(file_);
  file_ = nullptr;
  if (tmp_.empty()) return ok ? absl::OkStatus() : absl::InternalError(path_ + ": write failed");
  std::error_code ec;
  if (!ok) {
    fs::remove(tmp_, ec);
    return absl::InternalError(absl::StrCat(tmp_, ": write failed"));
  }
  fs::rename(tmp_, path_, ec);
  if (ec) {
    fs::remove(tmp_, ec);
    return absl::InternalError(absl::StrCat(path_, ": ", ec.message()));
  }
  return absl::OkStatus();
}

}  // namespace mal::tensorboard

#include "common/data/sample.h"

#include <set>

#include "absl/strings/str_cat.h"

namespace mal::data {

absl::Status LoadReport::Skip(absl::string_view reason, absl::string_view example, int64_t count) {
  if (strict_) return absl::InvalidArgumentError(absl::StrCat(reason, ": ", example));
  Entry& e = skips_[std::string(reason)];
  e.count += count;
  if (e.examples.size() < kMaxExamples) e.examples.emplace_back(example);
  return absl::OkStatus();
}

void LoadReport::Exclude(absl::string_view reason, absl::string_view example, int64_t count) {
  Entry& e = skips_[std::string(reason)];
  e.count += count;
  if (e.examples.size() < kMaxExamples) e.examples.emplace_back(example);
}

int64_t LoadReport::total() const {
  int64_t n = 0;
  for (const auto& [reason, e] : skips_) n += e.count;
  return n;
}

std::vector<std::string> DatasetIndex::Subjects() const {
  std::set<std::string> s;
  for (const Sample& x : samples) {
    if (!x.subject.empty()) s.insert(x.subject);
  }
  return {s.begin(), s.end()};
}

bool DatasetIndex::HasAuLabels() const { return !aus.empty(); }

bool DatasetIndex::HasExpressions() const {
  for (const Sample& x : samples) {
    if (x.expression >= 0) return true;
  }
  return false;
}

void DatasetIndex::CountPartition(const std::string& name, int64_t n, const std::string& unit,
                                  bool used) {
  for (Partition& p : partitions) {
    if (p.name == name) {
      p.entries += n;
      p.used = p.used || used;
      return;
    }
  }
  partitions.push_back(Partition{name, n, unit, used});
}

}  // namespace mal::data

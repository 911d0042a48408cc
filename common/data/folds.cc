#include "common/data/folds.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/util/random.h"

namespace mal::data {

namespace {

// fold k trains on two parts and tests on the third: fold1 tests part3, fold2 part2, fold3 part1.
constexpr int kTestPartOfFold[3] = {2, 1, 0};

// Which standard list the index's subjects belong to: "bp4d", "disfa" or "" when neither covers them.
std::string StandardListFor(const DatasetIndex& index) {
  for (const char* name : {"bp4d", "disfa"}) {
    std::set<std::string> known;
    for (const auto& part : StandardParts(name)) known.insert(part.begin(), part.end());
    if (std::string(name) == "disfa") known.insert("SN033");  // some lists say SN033 for SN013
    bool all = true;
    for (const std::string& s : index.Subjects()) all = all && known.count(s);
    if (all) return name;
  }
  return "";
}

absl::StatusOr<std::vector<std::vector<std::string>>> PartsFor(const DatasetIndex& index,
                                                               const FoldOptions& options) {
  const std::vector<std::string> subjects = index.Subjects();
  if (subjects.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat(index.root, ": samples have no subject ids, so no subject-independent folds"));
  }
  const std::string protocol = options.protocol.empty() ? DefaultProtocol(index.format)
                                                        : absl::AsciiStrToLower(options.protocol);
  std::vector<std::vector<std::string>> parts;
  if (protocol == "standard") {
    const std::string list = StandardListFor(index);
    if (list.empty()) {
      std::set<std::string> known;
      for (const char* name : {"bp4d", "disfa"})
        for (const auto& part : StandardParts(name)) known.insert(part.begin(), part.end());
      std::vector<std::string> unknown;
      for (const std::string& s : subjects)
        if (!known.count(s)) unknown.push_back(s);
      return absl::InvalidArgumentError(absl::StrCat(
          "cv.protocol: standard needs BP4D or DISFA subject ids; not in the lists: ",
          absl::StrJoin(unknown.begin(), unknown.begin() + std::min<size_t>(unknown.size(), 5),
                        " "),
          unknown.size() > 5 ? " ..." : "", " (use cv.folds for a seeded k-fold)"));
    }
    const std::set<std::string> present(subjects.begin(), subjects.end());
    for (const auto& part : StandardParts(list)) {
      std::vector<std::string> p;
      for (const std::string& s : part) {
        if (present.count(s)) p.push_back(s);
        if (s == "SN013" && present.count("SN033")) p.push_back("SN033");
      }
      std::sort(p.begin(), p.end());
      parts.push_back(std::move(p));
    }
    for (size_t k = 0; k < parts.size(); ++k) {
      if (parts[k].empty()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "cv.protocol: standard: no subject of ", list, " part", k + 1,
            " is in the data, so fold ", k == 0 ? 3 : (k == 1 ? 2 : 1), " has no test subjects"));
      }
    }
  } else if (protocol == "official") {
    std::set<std::string> train, test;
    for (const Sample& s : index.samples) {
      if (s.split == "train") train.insert(s.subject);
      else if (s.split == "test") test.insert(s.subject);
    }
    if (train.empty() || test.empty()) {
      return absl::FailedPreconditionError(
          "cv.protocol: official needs samples of both the train and the test split");
    }
    // One fold: train on the train split, test on the test split.
    parts.push_back({train.begin(), train.end()});
    parts.push_back({test.begin(), test.end()});
    return parts;
  } else if (protocol == "kfold") {
    if (options.folds < 2) return absl::InvalidArgumentError("cv.folds: needs at least 2 folds");
    if (static_cast<size_t>(options.folds) > subjects.size()) {
      return absl::InvalidArgumentError(absl::StrCat("cv.folds: ", options.folds, " folds but only ",
                                                     subjects.size(), " subjects"));
    }
    std::vector<std::string> order = subjects;  // sorted
    Rng rng(MixSeed(options.seed, 0xF01D));
    rng.Shuffle(order);
    parts.resize(options.folds);
    for (size_t i = 0; i < order.size(); ++i) parts[i % options.folds].push_back(order[i]);
    for (auto& p : parts) std::sort(p.begin(), p.end());
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "cv.protocol: unknown protocol '", options.protocol, "' (standard, official, kfold)"));
  }
  return parts;
}

std::map<std::string, std::vector<int64_t>> BySubject(const DatasetIndex& index) {
  std::map<std::string, std::vector<int64_t>> by_subject;
  for (size_t i = 0; i < index.samples.size(); ++i) {
    by_subject[index.samples[i].subject].push_back(static_cast<int64_t>(i));
  }
  return by_subject;
}

// The training subjects the reserve takes whole (FoldOptions::ValSplit::kSubjects): those with
// samples, ranked by a hash of (seed, subject), so that a subject chosen in one fold is chosen in
// every fold where it ranks as high among the training subjects; val_fraction of them, at least 2
// (one subject's frames would make the meta signal one person's), at most all but one.
absl::StatusOr<std::set<std::string>> ReserveSubjects(
    int number, const std::vector<std::string>& train_subjects,
    const std::map<std::string, std::vector<int64_t>>& by_subject, const FoldOptions& options) {
  std::vector<std::pair<uint64_t, std::string>> ranked;
  for (const std::string& subject : train_subjects) {
    auto it = by_subject.find(subject);
    if (it == by_subject.end() || it->second.empty()) continue;
    ranked.emplace_back(MixSeed(options.seed, StableHash(subject)), subject);
  }
  const size_t n = ranked.size();
  if (n < 3) {
    return absl::FailedPreconditionError(absl::StrCat(
        "mal.val_split: subjects reserves at least 2 whole training subjects and trains on the rest, "
        "but fold ", number, " has ", n, " training subject(s) with samples; use frames"));
  }
  const size_t k = std::min(
      n - 1, std::max<size_t>(2, static_cast<size_t>(std::lround(options.val_fraction * n))));
  std::sort(ranked.begin(), ranked.end());
  std::set<std::string> chosen;
  for (size_t i = 0; i < k; ++i) chosen.insert(ranked[i].second);
  return chosen;
}

// The samples of the test subjects, and of the training subjects minus the validation reserve:
// with kFrames drawn per subject from the seed (so the same subject reserves the same samples in
// every fold it trains in), with kSubjects every sample of ReserveSubjects.
absl::StatusOr<Fold> BuildFold(int number, const std::vector<std::string>& train_subjects,
                               const std::vector<std::string>& test_subjects,
                               const std::map<std::string, std::vector<int64_t>>& by_subject,
                               const FoldOptions& options) {
  Fold fold;
  fold.number = number;
  fold.train_subjects = train_subjects;
  fold.test_subjects = test_subjects;
  static const std::vector<int64_t> kNone;
  auto samples_of = [&](const std::string& subject) -> const std::vector<int64_t>& {
    auto it = by_subject.find(subject);
    return it == by_subject.end() ? kNone : it->second;
  };
  for (const std::string& subject : fold.test_subjects) {
    const auto& v = samples_of(subject);
    fold.test.insert(fold.test.end(), v.begin(), v.end());
  }
  std::set<std::string> reserved;
  if (options.val_split == FoldOptions::ValSplit::kSubjects && options.val_fraction > 0) {
    auto chosen = ReserveSubjects(number, train_subjects, by_subject, options);
    if (!chosen.ok()) return chosen.status();
    reserved = std::move(*chosen);
    fold.val_subjects.assign(reserved.begin(), reserved.end());
  }
  for (const std::string& subject : fold.train_subjects) {
    const std::vector<int64_t>& v = samples_of(subject);
    if (options.val_split == FoldOptions::ValSplit::kSubjects) {
      auto& part = reserved.count(subject) ? fold.val : fold.train;
      part.insert(part.end(), v.begin(), v.end());
      continue;
    }
    const size_t n_val =
        options.val_fraction > 0
            ? std::max<size_t>(1, static_cast<size_t>(std::lround(options.val_fraction * v.size())))
            : 0;
    // Never reserve a subject's only samples: training must keep at least one.
    const size_t reserve = v.size() > 1 ? std::min(n_val, v.size() - 1) : 0;
    Rng rng(MixSeed(options.seed, StableHash(subject)));
    std::vector<int64_t> shuffled = v;
    rng.Shuffle(shuffled);
    fold.val.insert(fold.val.end(), shuffled.begin(), shuffled.begin() + reserve);
    fold.train.insert(fold.train.end(), shuffled.begin() + reserve, shuffled.end());
  }
  std::sort(fold.train.begin(), fold.train.end());
  std::sort(fold.val.begin(), fold.val.end());
  std::sort(fold.test.begin(), fold.test.end());
  return fold;
}

}  // namespace

std::string DefaultProtocol(const std::string& format) {
  if (format == "bp4d" || format == "disfa" || format == "synthface") return "standard";
  if (format == "gft") return "official";
  return "kfold";
}

const std::vector<std::vector<std::string>>& StandardParts(const std::string& dataset) {
  static const std::vector<std::vector<std::string>> kBp4d = {
      {"F001", "F002", "F008", "F009", "F010", "F016", "F018", "F023", "M001", "M004", "M007",
       "M008", "M012", "M014"},
      {"F003", "F005", "F011", "F013", "F020", "F022", "M002", "M005", "M010", "M011", "M013",
       "M016", "M017", "M018"},
      {"F004", "F006", "F007", "F012", "F014", "F015", "F017", "F019", "F021", "M003", "M006",
       "M009", "M015"}};
  static const std::vector<std::vector<std::string>> kDisfa = {
      {"SN001", "SN002", "SN009", "SN010", "SN016", "SN026", "SN027", "SN030", "SN032"},
      {"SN006", "SN011", "SN012", "SN013", "SN018", "SN021", "SN024", "SN028", "SN031"},
      {"SN003", "SN004", "SN005", "SN007", "SN008", "SN017", "SN023", "SN025", "SN029"}};
  return dataset == "disfa" ? kDisfa : kBp4d;
}

absl::StatusOr<std::vector<Fold>> MakeFolds(const DatasetIndex& index, const FoldOptions& options) {
  if (!(options.val_fraction >= 0 && options.val_fraction < 1)) {
    return absl::InvalidArgumentError("mal.val_fraction: must be in [0, 1)");
  }
  auto parts_or = PartsFor(index, options);
  if (!parts_or.ok()) return parts_or.status();
  const auto& parts = *parts_or;
  const std::string protocol = options.protocol.empty() ? DefaultProtocol(index.format)
                                                        : absl::AsciiStrToLower(options.protocol);

  const std::map<std::string, std::vector<int64_t>> by_subject = BySubject(index);

  // (train subjects, test subjects) per fold.
  std::vector<std::pair<std::vector<std::string>, std::vector<std::string>>> splits;
  if (protocol == "official") {
    splits.emplace_back(parts[0], parts[1]);
  } else if (protocol == "standard") {
    for (int k = 0; k < 3; ++k) {
      std::vector<std::string> train;
      for (int p = 0; p < 3; ++p)
        if (p != kTestPartOfFold[k]) train.insert(train.end(), parts[p].begin(), parts[p].end());
      std::sort(train.begin(), train.end());
      splits.emplace_back(train, parts[kTestPartOfFold[k]]);
    }
  } else {
    for (size_t k = 0; k < parts.size(); ++k) {
      std::vector<std::string> train;
      for (size_t p = 0; p < parts.size(); ++p)
        if (p != k) train.insert(train.end(), parts[p].begin(), parts[p].end());
      std::sort(train.begin(), train.end());
      splits.emplace_back(train, parts[k]);
    }
  }

  std::vector<Fold> folds;
  for (size_t k = 0; k < splits.size(); ++k) {
    auto fold = BuildFold(static_cast<int>(k + 1), splits[k].first, splits[k].second, by_subject,
                          options);
    if (!fold.ok()) return fold.status();
    folds.push_back(std::move(*fold));
  }
  return folds;
}

absl::StatusOr<Fold> AllSubjectsFold(const DatasetIndex& index, const FoldOptions& options) {
  if (!(options.val_fraction >= 0 && options.val_fraction < 1)) {
    return absl::InvalidArgumentError("mal.val_fraction: must be in [0, 1)");
  }
  const std::vector<std::string> subjects = index.Subjects();
  if (subjects.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(index.root, ": samples have no subject ids"));
  }
  return BuildFold(0, subjects, {}, BySubject(index), options);
}

std::vector<double> PositiveRates(const DatasetIndex& index, const std::vector<int64_t>& samples) {
  std::vector<double> pos(index.aus.size(), 0), known(index.aus.size(), 0);
  for (int64_t i : samples) {
    const Sample& s = index.samples[i];
    for (size_t k = 0; k < s.au.size() && k < pos.size(); ++k) {
      if (s.au[k] == kAuUnknown) continue;
      known[k] += 1;
      pos[k] += s.au[k] == kAuPresent;
    }
  }
  for (size_t k = 0; k < pos.size(); ++k) pos[k] = known[k] > 0 ? pos[k] / known[k] : 0;
  return pos;
}

}  // namespace mal::data

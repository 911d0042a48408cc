// RAF-DB basic: EmoLabel/list_patition_label.txt ("train_00001.jpg 5", labels 1..7), images
// Image/aligned/<stem>_aligned.jpg or Image/original/<name>, and the annotator distribution file
// ("<name.jpg> p1 ... p7"), from which consistency = share of the final label.

#include <algorithm>
#include <array>
#include <filesystem>
#include <unordered_map>
#include <unordered_set>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/data/expression.h"
#include "common/data/reader.h"
#include "common/data/reader_util.h"
#include "common/util/csv.h"
#include "common/util/files.h"
#include "common/util/status_macros.h"

namespace mal::data {

namespace fs = std::filesystem;

namespace {

using Distribution = std::array<double, 7>;

// Distribution files name images as the list does ("train_00001.jpg"), or by the aligned file
// ("train_00001_aligned.jpg"), or without extension: all are keyed by the bare stem.
std::string DistributionKey(const std::string& name) {
  std::string stem = fs::path(name).stem().string();
  if (absl::EndsWith(stem, "_aligned")) stem.resize(stem.size() - 8);
  return stem;
}

absl::StatusOr<std::unordered_map<std::string, Distribution>> ReadDistribution(
    const std::string& path, LoadReport& report) {
  ASSIGN_OR_RETURN(TextLines lines, ReadLines(path));
  std::unordered_map<std::string, Distribution> out;
  for (size_t i = 0; i < lines.lines.size(); ++i) {
    absl::string_view line = absl::StripAsciiWhitespace(lines.lines[i]);
    if (line.empty()) continue;
    std::vector<std::string> f = absl::StrSplit(line, absl::ByAnyChar(" \t,"), absl::SkipEmpty());
    absl::Status bad;
    Distribution d{};
    double sum = 0;
    if (f.size() != 8) {
      bad = absl::InvalidArgumentError(
          absl::StrCat(f.size(), " fields, expected '<name> p1 ... p7'"));
    } else {
      for (int k = 0; k < 7 && bad.ok(); ++k) {
        auto v = ParseDouble(f[k + 1], absl::StrCat("p", k + 1));
        if (!v.ok()) {
          bad = v.status();
        } else if (*v < 0) {
          bad = absl::InvalidArgumentError(absl::StrCat("p", k + 1, " is negative"));
        } else {
          d[k] = *v;
          sum += *v;
        }
      }
      if (bad.ok() && sum <= 0) bad = absl::InvalidArgumentError("distribution sums to 0");
    }
    if (!bad.ok()) {
      RETURN_IF_ERROR(
          report.Skip("malformed_line", absl::StrCat(lines.Where(i), ": ", bad.message())));
      continue;
    }
    for (double& p : d) p /= sum;
    if (!out.emplace(DistributionKey(f[0]), d).second) {
      RETURN_IF_ERROR(report.Skip(
          "duplicate_line", absl::StrCat(lines.Where(i), ": '", f[0],
                                         "' has a distribution already; the first line is kept")));
    }
  }
  return out;
}

std::unordered_set<std::string> ListFiles(const std::string& dir) {
  std::vector<std::string> names = ListDirectory(dir, /*directories=*/false);
  return {names.begin(), names.end()};
}

}  // namespace

namespace {

// The annotator distribution file: data.fe.distribution when given (NotFound when missing),
// else the first of RAF-DB's usual names that exists, else "" (consistency unknown).
absl::StatusOr<std::string> FindDistributionFile(const ReaderOptions& options) {
  std::error_code ec;
  if (!options.distribution.empty()) {
    const std::string path = ResolvePath(options.root, options.distribution);
    if (!fs::is_regular_file(path, ec)) {
      return absl::NotFoundError(absl::StrCat(path, ": no such file (data.fe.distribution)"));
    }
    return path;
  }
  for (const char* candidate : {"EmoLabel/distribution_basic.txt", "distribution_basic.txt",
                                "EmoLabel/distribute_basic.txt", "distribute_basic.txt"}) {
    const std::string p = (fs::path(options.root) / candidate).string();
    if (fs::is_regular_file(p, ec)) return p;
  }
  return std::string();
}

}  // namespace

absl::StatusOr<DatasetIndex> ReadRafDb(const ReaderOptions& options) {
  DatasetIndex index = NewIndex("rafdb", options, /*au_format=*/false);
  LoadReport& report = index.report;
  const std::string list_path =
      (fs::path(options.root) / "EmoLabel" / "list_patition_label.txt").string();
  std::error_code ec;
  if (!fs::is_regular_file(list_path, ec)) {
    return absl::NotFoundError(absl::StrCat(
        list_path,
        ": no such file (expected RAF-DB basic layout EmoLabel/list_patition_label.txt)"));
  }
  ASSIGN_OR_RETURN(TextLines lines, ReadLines(list_path));
  if (std::all_of(lines.lines.begin(), lines.lines.end(),
                  [](const std::string& l) { return absl::StripAsciiWhitespace(l).empty(); })) {
    RETURN_IF_ERROR(report.Skip("empty_label_file", absl::StrCat(list_path, ": no image listed")));
  }

  // A list re-indexed from 0 (a training script's own copy) reads one class off in every line that
  // is not 0: the whole file is refused, not only its lines labelled 0.
  for (size_t i = 0; i < lines.lines.size(); ++i) {
    std::vector<std::string> f =
        absl::StrSplit(lines.lines[i], absl::ByAnyChar(" \t\r"), absl::SkipEmpty());
    long label = -1;
    if (f.size() == 2 && absl::SimpleAtoi(f[1], &label) && label == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          lines.Where(i),
          ": label 0: RAF-DB's labels are 1..7 (1 Surprise ... 7 Neutral), so this "
          "list is numbered from 0 and every other line would read one expression off; use the "
          "dataset's own EmoLabel/list_patition_label.txt"));
    }
  }

  ASSIGN_OR_RETURN(const std::string dist_path, FindDistributionFile(options));
  std::unordered_map<std::string, Distribution> distribution;
  if (dist_path.empty()) {
    report.Note(
        "no annotator distribution file found: consistency unknown (set data.fe.distribution)");
  } else {
    ASSIGN_OR_RETURN(distribution, ReadDistribution(dist_path, report));
  }

  const std::string image_dir = (fs::path(options.images.empty() ? options.root : options.images) /
                                 "Image" / (options.aligned ? "aligned" : "original"))
                                    .string();
  const std::unordered_set<std::string> files = ListFiles(image_dir);
  if (files.empty()) report.Note(absl::StrCat(image_dir, ": no images there"));
  // Images re-saved or copied by other tools: train_00001_aligned.JPG or .png answer too (the exact
  // name first), as BP4D's and DISFA's frames do.
  std::unordered_map<std::string, std::string> by_stem;
  std::vector<std::string> names(files.begin(), files.end());
  std::sort(names.begin(), names.end());  // the first of two spellings, the same on every machine
  for (const std::string& name : names) {
    if (IsImageFile(name)) {
      by_stem.emplace(absl::AsciiStrToLower(fs::path(name).stem().string()), name);
    }
  }
  auto find_image = [&](const std::string& file) -> std::string {
    if (files.count(file)) return file;
    auto it = by_stem.find(absl::AsciiStrToLower(fs::path(file).stem().string()));
    return it == by_stem.end() ? std::string() : it->second;
  };
  const std::string want = options.split.empty() ? "train" : options.split;
  int64_t without_distribution = 0;
  for (size_t i = 0; i < lines.lines.size(); ++i) {
    absl::string_view line = absl::StripAsciiWhitespace(lines.lines[i]);
    if (line.empty()) continue;
    std::vector<std::string> f = absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    long label = 0;
    if (f.size() != 2 || !absl::SimpleAtoi(f[1], &label) || label < 1 || label > 7) {
      RETURN_IF_ERROR(report.Skip(
          "malformed_line",
          absl::StrCat(lines.Where(i), ": expected '<name>.jpg <label 1..7>', got '", line, "'")));
      continue;
    }
    const std::string& name = f[0];
    const std::string part = absl::StartsWith(name, "train_")  ? "train"
                             : absl::StartsWith(name, "test_") ? "test"
                                                               : "";
    if (part.empty()) {
      RETURN_IF_ERROR(report.Skip(
          "malformed_line",
          absl::StrCat(lines.Where(i), ": '", name, "' has neither train_ nor test_ prefix")));
      continue;
    }
    index.CountPartition(part, 1, "images", want == "all" || part == want);
    if (want != "all" && part != want) continue;
    const std::string stem = fs::path(name).stem().string();
    const std::string file = options.aligned ? absl::StrCat(stem, "_aligned.jpg") : name;
    Sample s;
    s.id = stem;
    s.split = part;
    s.expression = ExpressionFromRafDb(static_cast<int>(label));
    if (auto it = distribution.find(DistributionKey(name)); it != distribution.end()) {
      s.consistency = static_cast<float>(it->second[label - 1]);
    } else {
      ++without_distribution;
    }
    const std::string found_name = find_image(file);
    const std::string path =
        (fs::path(image_dir) / (found_name.empty() ? file : found_name)).string();
    ASSIGN_OR_RETURN(bool found,
                     CheckImage(found_name.empty() ? "" : path,
                                absl::StrCat(lines.Where(i), ": ", path), options, report));
    if (!found) continue;
    s.image = path;
    index.samples.push_back(std::move(s));
  }
  if (!dist_path.empty() && without_distribution > 0) {
    report.Note(absl::StrCat(without_distribution, " sample(s) have no line in ", dist_path,
                             ": consistency unknown for them"));
  }
  return index;
}

}  // namespace mal::data

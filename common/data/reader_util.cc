#include "common/data/reader_util.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <opencv2/imgcodecs.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/image/image_file.h"
#include "common/util/files.h"
#include "common/util/progress.h"

namespace mal::data {

namespace fs = std::filesystem;

DatasetIndex NewIndex(const std::string& format, const ReaderOptions& options, bool au_format) {
  DatasetIndex index;
  index.format = format;
  index.root = options.root;
  if (au_format) index.aus = options.aus.empty() ? DefaultAus(format) : options.aus;
  index.report = LoadReport(options.strict);
  return index;
}

bool IsImageFile(absl::string_view name) {
  const std::string lower = absl::AsciiStrToLower(name);
  for (const char* ext : {".jpg", ".jpeg", ".png", ".bmp"}) {
    if (absl::EndsWith(lower, ext)) return true;
  }
  return false;
}

FrameDirectory::FrameDirectory(const std::string& dir) {
  std::error_code ec;
  fs::directory_iterator it(dir, ec);
  if (ec) return;
  exists_ = true;
  std::vector<std::string> names;
  for (const auto& entry : it) {
    const std::string name = entry.path().filename().string();
    if (IsImageFile(name)) names.push_back(name);
  }
  std::sort(names.begin(), names.end());  // deterministic choice if two files share a frame
  for (const std::string& name : names) {
    const std::string stem = fs::path(name).stem().string();
    long frame;
    if (!absl::SimpleAtoi(stem, &frame)) continue;
    frames_.emplace(frame, (fs::path(dir) / name).string());
  }
}

const std::string* FrameDirectory::Find(long frame) const {
  auto it = frames_.find(frame);
  return it == frames_.end() ? nullptr : &it->second;
}

FrameNaming DetectFrameNaming(const FrameDirectory& images, const std::vector<long>& frames,
                              const std::vector<long>& offsets) {
  if (offsets.empty()) return FrameNaming{};
  auto matched = [&](long offset) {
    int64_t n = 0;
    for (long f : frames) n += images.Find(f + offset) != nullptr;
    return n;
  };
  const FrameNaming documented{offsets[0], matched(offsets[0])};
  FrameNaming best = documented;
  for (size_t k = 1; k < offsets.size(); ++k) {
    const FrameNaming other{offsets[k], matched(offsets[k])};
    if (other.matched > best.matched) best = other;
  }
  // Another naming must explain the directory, not just a frame more of it: frames renumbered
  // from 1 match (nearly) all of the labels; in a folder holding every other frame each offset
  // matches about half, and edge frames would decide by one.
  const int64_t n = static_cast<int64_t>(frames.size());
  const bool covers = best.matched * 10 >= n * 9;
  const bool clearly_more =
      best.matched >= documented.matched + 2 && best.matched * 10 >= documented.matched * 11;
  return covers || clearly_more ? best : documented;
}

void FrameNamingTally::Note(absl::string_view what, long documented, LoadReport& report) const {
  if (directories_.empty()) return;
  std::vector<std::string> parts;
  for (const auto& [offset, n] : directories_) {
    parts.push_back(absl::StrCat("image N",
                                 offset == 0  ? ""
                                 : offset > 0 ? "+"
                                              : "-",
                                 offset == 0 ? "" : absl::StrCat(std::labs(offset)),
                                 offset == documented ? " (the documented layout)" : "", " in ", n,
                                 " of them"));
  }
  report.Note(
      absl::StrCat("image names of ", what, ": label frame N is ", absl::StrJoin(parts, ", ")));
}

absl::StatusOr<int8_t> ParseAuCell(absl::string_view cell) {
  cell = absl::StripAsciiWhitespace(cell);
  if (cell.empty() || cell == "9" || cell == "-1") return kAuUnknown;
  if (cell == "0") return kAuAbsent;
  if (cell == "1") return kAuPresent;
  double v;
  if (absl::SimpleAtod(cell, &v)) {
    if (v == 0.0) return kAuAbsent;
    if (v == 1.0) return kAuPresent;
    if (v == 9.0 || v == -1.0) return kAuUnknown;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("AU value '", cell, "' is not 0, 1 or 9 (unknown)"));
}

int ParseAuColumn(absl::string_view name) {
  std::string n = absl::AsciiStrToLower(absl::StripAsciiWhitespace(name));
  if (absl::StartsWith(n, "au")) {
    n.erase(0, 2);
    if (!n.empty() && n[0] == '_') n.erase(0, 1);
    if (absl::EndsWith(n, "_c")) n.resize(n.size() - 2);
  }
  int au;
  if (n.empty() || !std::isdigit(static_cast<unsigned char>(n[0])) || !absl::SimpleAtoi(n, &au)) {
    return -1;
  }
  return au;
}

bool KeepAuSample(const Sample& sample, absl::string_view where, const ReaderOptions& options,
                  LoadReport& report) {
  int known = 0;
  for (int8_t v : sample.au) known += v != kAuUnknown;
  if (known == 0) {
    report.Exclude("no_known_au_label",
                   absl::StrCat(where, ": ", sample.id, ": every used AU is unknown (9)"));
    return false;
  }
  if (options.drop_unknown_au && known < static_cast<int>(sample.au.size())) {
    report.Exclude("unknown_au_label", absl::StrCat(where, ": ", sample.id,
                                                    ": an AU is unknown (9; unknown_au: drop)"));
    return false;
  }
  return true;
}

absl::StatusOr<bool> CheckImage(const std::string& path, absl::string_view what,
                                const ReaderOptions& options, LoadReport& report) {
  NoteProgress();  // one stat, or a decode with verify_images: 146,000 of them on BP4D
  std::error_code ec;
  if (path.empty() || !fs::is_regular_file(path, ec)) {
    absl::Status s =
        report.Skip("missing_image", path.empty() ? absl::StrCat(what, ": no image file")
                                                  : absl::StrCat(what, ": no image ", path));
    if (!s.ok()) return s;
    return false;
  }
  if (options.verify_images) {
    // The container first (a truncated JPEG decodes into a partly grey image without an error),
    // then a decode at half resolution.
    auto bytes = ReadFile(path);
    absl::Status bad;
    if (!bytes.ok()) {
      bad = absl::DataLossError(absl::StrCat(path, ": cannot read it"));
    } else if (auto decoded = image::DecodeImageBytes(*bytes, path, /*half_size=*/true);
               !decoded.ok()) {
      bad = decoded.status();
    }
    if (!bad.ok()) {
      absl::Status s = report.Skip("unreadable_image", absl::StrCat(what, ": ", bad.message()));
      if (!s.ok()) return s;
      return false;
    }
  }
  return true;
}

absl::Status RequireDirectory(const std::string& path, absl::string_view expected) {
  std::error_code ec;
  if (!fs::is_directory(path, ec)) {
    return absl::NotFoundError(absl::StrCat(path, ": no such directory (expected ", expected, ")"));
  }
  return absl::OkStatus();
}

std::vector<std::string> ListDirectory(const std::string& dir, bool directories) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (entry.is_directory(ec) == directories) names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

void NoteMissingAuColumns(const std::map<int, std::vector<std::string>>& missing,
                          LoadReport& report) {
  for (const auto& [au, files] : missing) {
    std::vector<std::string> shown(files.begin(),
                                   files.begin() + std::min<size_t>(files.size(), 3));
    report.Note(absl::StrCat("AU", au, " has no column in ", files.size(),
                             " label file(s), masked there: ", absl::StrJoin(shown, ", ")));
  }
}

}  // namespace mal::data

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
#include "common/util/status_macros.h"

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
  if (ec) {
    // Missing: its frames are missing images. Anything else (permission denied, not a directory)
    // is said as it is.
    if (ec != std::errc::no_such_file_or_directory) error_ = ec.message();
    return;
  }
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
    if (!first_ || frame < *first_) first_ = frame;
  }
}

const std::string* FrameDirectory::Find(long frame) const {
  auto it = frames_.find(frame);
  return it == frames_.end() ? nullptr : &it->second;
}

namespace {
// "image N", "image N-1", "image N+1": the image of label frame N under `offset`.
std::string ImageNumberName(long offset) {
  return absl::StrCat("image N",
                      offset > 0   ? "+"
                      : offset < 0 ? "-"
                                   : "",
                      offset == 0 ? "" : absl::StrCat(std::labs(offset)));
}
}  // namespace

FrameNaming DetectFrameNaming(const FrameDirectory& images, const std::vector<long>& frames,
                              const std::vector<long>& offsets, bool whole_video) {
  FrameNaming none;
  if (offsets.empty()) return none;
  none.offset = offsets[0];
  if (frames.empty()) return none;
  std::vector<FrameNaming> fits(offsets.size());  // per offset, in `offsets`' order
  for (size_t k = 0; k < offsets.size(); ++k) {
    fits[k].offset = offsets[k];
    for (long f : frames) fits[k].matched += images.Find(f + offsets[k]) != nullptr;
  }
  const FrameNaming& documented = fits[0];
  const FrameNaming* best = &documented;
  for (const FrameNaming& other : fits)
    if (other.matched > best->matched) best = &other;
  // DISFA's labels cover the whole video from its first frame: the offset that puts the folder's
  // first image on the first labelled frame is the extraction's. It breaks a tie at the top (an
  // ffmpeg extraction that stopped early, 1..4800 for 4845 labelled frames, fits 4800 at N and at
  // N-1 alike, and the tie kept the documented N-1: every label a frame off).
  const long first_frame = *std::min_element(frames.begin(), frames.end());
  const FrameNaming* first_fit = nullptr;
  if (whole_video && images.first()) {
    for (const FrameNaming& fit : fits)
      if (*images.first() == first_frame + fit.offset) first_fit = &fit;
  }
  const std::string by_first_image =
      images.first()
          ? absl::StrCat("the first image, ", *images.first(), ", is the first labelled frame's")
          : std::string();
  FrameNaming chosen = documented;
  std::string why = "the format's documented naming";
  bool decided = false;  // by the counts alone
  if (first_fit != nullptr && first_fit != best && first_fit->matched == best->matched) {
    best = first_fit;
  }
  // Another naming must explain the directory, not just a frame more of it: frames renumbered
  // from 1 match (nearly) all of the labels; in a folder holding every other frame each offset
  // matches about half, and edge frames would decide by one.
  const int64_t n = static_cast<int64_t>(frames.size());
  const bool covers = best->matched * 10 >= n * 9;
  const bool clearly_more =
      best->matched >= documented.matched + 2 && best->matched * 10 >= documented.matched * 11;
  if (covers || clearly_more) {
    chosen = *best;
    // Decided, unless DISFA's top count is shared (then said in a note, with what broke the tie).
    decided = true;
    for (const FrameNaming& fit : fits) {
      if (whole_video && &fit != best && fit.matched == best->matched) decided = false;
    }
    if (!decided && best == first_fit) why = by_first_image;
  } else if (first_fit != nullptr && first_fit->matched >= documented.matched) {
    // The counts do not decide: the first image does, if it fits as many frames as the
    // documented naming.
    chosen = *first_fit;
    why = by_first_image;
  }
  if (decided) return chosen;
  std::vector<std::string> close;  // the offsets that fit nearly as well as the one taken
  for (const FrameNaming& fit : fits) {
    if (fit.offset == chosen.offset || fit.matched == 0 || fit.matched * 10 < chosen.matched * 9)
      continue;
    close.push_back(absl::StrCat(ImageNumberName(fit.offset), " (", fit.matched, ")"));
  }
  if (!close.empty()) {
    chosen.ambiguity = absl::StrCat(
        "image names fit label frame N as ", ImageNumberName(chosen.offset), " (", chosen.matched,
        " of ", n, " frames) and as ", absl::StrJoin(close, ", "), "; took ",
        ImageNumberName(chosen.offset), ": ", why, " (check that labels and images line up)");
  }
  return chosen;
}

void FrameNamingTally::Note(absl::string_view what, long documented, LoadReport& report) const {
  for (const std::string& note : ambiguities_) report.Note(note);
  if (ambiguous_ > static_cast<int64_t>(ambiguities_.size())) {
    report.Note(absl::StrCat("... and ", ambiguous_ - static_cast<int64_t>(ambiguities_.size()),
                             " more ", what, " whose image names fit two namings nearly alike"));
  }
  if (directories_.empty()) return;
  std::vector<std::string> parts;
  for (const auto& [offset, n] : directories_) {
    parts.push_back(absl::StrCat(ImageNumberName(offset),
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

absl::Status SkipUnreadableImageDirectory(const std::string& dir, const std::string& error,
                                          int64_t frames, LoadReport& report) {
  return report.Skip("unreadable_image_directory",
                     absl::StrCat(dir, ": ", error, " (its ", frames, " labelled frames skipped)"),
                     frames);
}

bool IsSystemMetadata(absl::string_view name) {
  return absl::StartsWith(name, ".") || name == "__MACOSX" || name == "Thumbs.db" ||
         name == "desktop.ini";
}

std::vector<std::string> ListDirectory(const std::string& dir, bool directories,
                                       std::vector<std::string>* special) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (IsSystemMetadata(name)) continue;
    std::error_code type_ec;
    const bool is_directory = entry.is_directory(type_ec);
    if (directories) {
      if (is_directory) names.push_back(name);
      continue;
    }
    // Files: regular ones, and links to nothing (opening one says so); never a named pipe,
    // socket or device, which a read would block on.
    if (entry.is_regular_file(type_ec) ||
        (entry.is_symlink(type_ec) && !fs::exists(entry.path(), type_ec))) {
      names.push_back(name);
    } else if (!is_directory && special != nullptr) {
      special->push_back(name);
    }
  }
  std::sort(names.begin(), names.end());
  if (special != nullptr) std::sort(special->begin(), special->end());
  return names;
}

absl::Status ReportSpecialFiles(const std::string& dir, const std::vector<std::string>& special,
                                absl::string_view extension, LoadReport& report) {
  for (const std::string& name : special) {
    if (!absl::EndsWithIgnoreCase(name, extension)) continue;
    RETURN_IF_ERROR(report.Skip(
        "unreadable_label_file",
        absl::StrCat((fs::path(dir) / name).string(),
                     ": not a regular file (a named pipe, socket or device): not read")));
  }
  return absl::OkStatus();
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

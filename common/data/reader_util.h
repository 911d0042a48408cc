#ifndef MAL_COMMON_DATA_READER_UTIL_H_
#define MAL_COMMON_DATA_READER_UTIL_H_

// Helpers shared by the dataset readers (internal to common/data).

#include <map>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/data/reader.h"
#include "common/data/sample.h"

namespace mal::data {

// The images of one directory keyed by frame number, whatever their zero padding or extension
// (0732.jpg and 732.png both answer frame 732). One directory listing instead of a stat per frame.
class FrameDirectory {
 public:
  explicit FrameDirectory(const std::string& dir);
  bool exists() const { return exists_; }
  // Why the directory could not be listed when it exists but cannot be read ("Permission
  // denied"); empty otherwise (a missing directory: exists() is false).
  const std::string& error() const { return error_; }
  // The lowest image number in the directory, or nullopt when it holds no numbered image.
  std::optional<long> first() const { return first_; }
  // The image path of `frame`, or nullptr.
  const std::string* Find(long frame) const;

 private:
  bool exists_ = false;
  std::string error_;
  std::optional<long> first_;
  std::unordered_map<long, std::string> frames_;
};

// How a directory's image names relate to the label frame numbers: image number = frame + offset.
// Datasets are documented with one convention (DISFA: 0-based images for 1-based labels), but
// frames re-extracted with ffmpeg are numbered from 1, and a wrong guess shifts every label by a
// frame while losing only one "missing image" per video.
struct FrameNaming {
  long offset = 0;
  int64_t matched = 0;  // label frames with an image under that offset
  // Empty when the names decide; otherwise what they allow, for a note: "image names fit label
  // frame N as image N (80 of 100 frames) and as image N-1 (80); took image N: ...".
  std::string ambiguity;
};

// Picks among `offsets` (the format's documented convention first) the one under which most of
// `frames` have an image in `images` (ties to the earlier offset), but leaves the documented one
// only for an offset that has an image for at least 90% of the frames, or for 2 frames and 10%
// more than the documented one: a folder of every other frame matches about half under each
// offset, and must not be shifted by an edge frame.
// `whole_video`: the labels cover every frame of the video from its first (DISFA), so the
// extraction's first image is the first labelled frame. Where the counts do not decide (an
// extraction stopped early: 1..80 for 100 labels matches 80 frames at N and at N-1), the offset
// that puts the directory's first image on the first labelled frame is taken if it matches at
// least as many frames as the documented one.
FrameNaming DetectFrameNaming(const FrameDirectory& images, const std::vector<long>& frames,
                              const std::vector<long>& offsets, bool whole_video = false);

// Counts directories per detected offset, for a note saying which conventions were found.
class FrameNamingTally {
 public:
  void Add(long offset) { ++directories_[offset]; }
  // A folder's FrameNaming::ambiguity ("DIR: image names fit ..."); Note says the first 5 and
  // counts the rest (a release of sparse folders would otherwise give one note per video).
  void AddAmbiguity(std::string note) {
    if (ambiguities_.size() < 5) ambiguities_.push_back(std::move(note));
    ++ambiguous_;
  }
  // Adds to `report` a note such as "image names of DISFA subjects: label frame N is image N-1
  // (the documented layout) in 26, image N in 1". `documented` is the format's own offset.
  void Note(absl::string_view what, long documented, LoadReport& report) const;

 private:
  std::map<long, int64_t> directories_;
  std::vector<std::string> ambiguities_;
  int64_t ambiguous_ = 0;
};

// An empty index of `format` for `options`: root, strictness, and for AU formats the requested AUs
// (or the format's standard list).
DatasetIndex NewIndex(const std::string& format, const ReaderOptions& options, bool au_format);

// True for the image extensions we read (jpg, jpeg, png, bmp), case-insensitive.
bool IsImageFile(absl::string_view name);

// An AU cell: 0 absent, 1 present; 9, empty or -1 unknown. Anything else is an error.
absl::StatusOr<int8_t> ParseAuCell(absl::string_view cell);

// Parses an AU column name: "12", "AU12", "AU_12", "au12_c". Returns -1 if it is not one.
int ParseAuColumn(absl::string_view name);

// Applies the unknown-label policy to a filled-in sample. Returns false (after counting it as
// no_known_au_label or unknown_au_label, with `where`: "file:line" or the sample id) when the
// sample must be dropped. Never an error, strict or not: a 9 is the datasets' own "not coded",
// and dropping such frames is the policy asked for, not a problem of the file.
bool KeepAuSample(const Sample& sample, absl::string_view where, const ReaderOptions& options,
                  LoadReport& report);

// Checks that the image exists (and decodes, with verify_images); records a skip otherwise.
absl::StatusOr<bool> CheckImage(const std::string& path, absl::string_view what,
                                const ReaderOptions& options, LoadReport& report);

// Fails with NotFound naming `path` and what was expected there when it is not a directory.
absl::Status RequireDirectory(const std::string& path, absl::string_view expected);

// Records the `frames` labelled frames of an image directory that exists but cannot be listed
// (`error`: "Permission denied") as skipped under "unreadable_image_directory", naming it; an error
// in strict mode.
absl::Status SkipUnreadableImageDirectory(const std::string& dir, const std::string& error,
                                          int64_t frames, LoadReport& report);

// Names that operating systems and archivers leave beside data and that are never data: hidden
// names (".DS_Store", macOS's "._<name>" AppleDouble files), "__MACOSX", "Thumbs.db", "desktop.ini".
bool IsSystemMetadata(absl::string_view name);

// Sorted names of the entries of a directory: its directories, or its regular files (and links to
// nothing, which fail clearly when opened; never a named pipe, socket or device). Names for which
// IsSystemMetadata holds are left out. Listing files, `special` (when given) receives the sorted
// names of the named pipes, sockets and devices that were left out.
std::vector<std::string> ListDirectory(const std::string& dir, bool directories,
                                       std::vector<std::string>* special = nullptr);

// Records each of `special` (ListDirectory's, in `dir`) whose name ends in `extension` as a
// skipped "unreadable_label_file", naming it (a read would block); an error in strict mode. So a
// label file that is not a file is said, not silently absent.
absl::Status ReportSpecialFiles(const std::string& dir, const std::vector<std::string>& special,
                                absl::string_view extension, LoadReport& report);

// Counts per requested AU how many files lacked its column, as a note.
void NoteMissingAuColumns(const std::map<int, std::vector<std::string>>& missing,
                          LoadReport& report);

}  // namespace mal::data

#endif  // MAL_COMMON_DATA_READER_UTIL_H_

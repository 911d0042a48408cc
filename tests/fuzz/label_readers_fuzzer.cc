// libFuzzer target: the dataset label readers on label files of any content. The first byte picks
// the format; the rest, split at the first 0xFF byte into A and B, becomes its label files in a
// scratch dataset root (images are absent, so every frame is also a missing-image skip):
//   0 csv        manifest.csv = A
//   1 rafdb      EmoLabel/list_patition_label.txt = A, EmoLabel/distribution_basic.txt = B
//   2 bp4d       AUCoding/AU_OCC/F001_T1.csv = A, AUCoding/AU_OCC/M002_T8.csv = B
//   3 disfa      ActionUnit_Labels/SN001/SN001_au1.txt = A, .../SN001_au2.txt = B
//   4 gft        split.txt = A, AU_OCC/001A_1.csv = B
//   5 affectnet  Manually_Annotated_file_lists/training.csv = A, .../validation.csv = B
// Strict and lenient reading both run.

#include <glog/logging.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

#include "common/data/reader.h"

namespace {

void Write(const std::filesystem::path& path, const std::string& text) {
  std::filesystem::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary) << text;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  FLAGS_minloglevel = 3;  // every skipped line is logged; quiet for speed
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1 || size > (1 << 16)) return 0;
  static const std::filesystem::path root =
      std::filesystem::temp_directory_path() / ("mal-fuzz-labels-" + std::to_string(::getpid()));
  std::error_code ec;
  std::filesystem::remove_all(root, ec);
  const std::string rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  const size_t cut = rest.find('\xff');
  const std::string a = rest.substr(0, cut);
  const std::string b = cut == std::string::npos ? "" : rest.substr(cut + 1);
  // The format and where A and B go (relative to the root; empty: B unused).
  struct Layout {
    const char* format;
    const char* file_a;
    const char* file_b;
  };
  static const Layout kLayouts[] = {
      {"csv", "manifest.csv", ""},
      {"rafdb", "EmoLabel/list_patition_label.txt", "EmoLabel/distribution_basic.txt"},
      {"bp4d", "AUCoding/AU_OCC/F001_T1.csv", "AUCoding/AU_OCC/M002_T8.csv"},
      {"disfa", "ActionUnit_Labels/SN001/SN001_au1.txt", "ActionUnit_Labels/SN001/SN001_au2.txt"},
      {"gft", "split.txt", "AU_OCC/001A_1.csv"},
      {"affectnet", "Manually_Annotated_file_lists/training.csv",
       "Manually_Annotated_file_lists/validation.csv"},
  };
  const Layout& layout = kLayouts[data[0] % 6];
  Write(root / layout.file_a, a);
  if (*layout.file_b != '\0') Write(root / layout.file_b, b);
  for (bool strict : {false, true}) {
    mal::data::ReaderOptions options;
    options.root = root.string();
    options.strict = strict;
    options.split = "all";
    (void)mal::data::LoadDataset(layout.format, options, mal::data::DataRole::kAu);
  }
  std::filesystem::remove_all(root, ec);
  return 0;
}

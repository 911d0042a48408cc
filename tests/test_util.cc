#include "tests/test_util.h"

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <opencv2/imgcodecs.hpp>
#include <stdexcept>
#include <thread>

namespace mal::testing {

namespace fs = std::filesystem;

TempDir::TempDir() {
  std::string tmpl = (fs::temp_directory_path() / "mal_test_XXXXXX").string();
  if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

void WriteText(const std::string& path, const std::string& contents) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream out(path, std::ios::binary);
  out << contents;
  if (!out) throw std::runtime_error("cannot write " + path);
}

void WriteImage(const std::string& path, int size, int value) {
  fs::create_directories(fs::path(path).parent_path());
  cv::Mat m(size, size, CV_8UC3, cv::Scalar(value, value / 2, 255 - value));
  if (!cv::imwrite(path, m)) throw std::runtime_error("cannot write " + path);
}

std::string SourceDir() { return MAL_SOURCE_DIR; }

std::string BinaryDir() { return MAL_BINARY_DIR; }

bool WaitFor(const std::function<bool()>& done, std::chrono::seconds deadline,
             std::chrono::milliseconds poll) {
  const auto end = std::chrono::steady_clock::now() + deadline;
  while (std::chrono::steady_clock::now() < end) {
    if (done()) return true;
    std::this_thread::sleep_for(poll);
  }
  return done();
}

}  // namespace mal::testing

#ifndef MAL_TESTS_TEST_UTIL_H_
#define MAL_TESTS_TEST_UTIL_H_

// Fixture helpers: a temporary directory removed at the end of the test, and writers for the
// small files that reproduce real dataset layouts.

#include <chrono>
#include <functional>
#include <string>

namespace mal::testing {

class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  // path()/relative
  std::string operator/(const std::string& relative) const { return path_ + "/" + relative; }

 private:
  std::string path_;
};

// Writes `contents` to `path`, creating parent directories.
void WriteText(const std::string& path, const std::string& contents);
// Writes a small valid JPEG (or PNG, by extension) of a flat colour, creating parent directories.
void WriteImage(const std::string& path, int size = 16, int value = 128);

// Polls `done` every `poll` until it holds (true) or `deadline` passed (then one last call's
// answer).
bool WaitFor(const std::function<bool()>& done, std::chrono::seconds deadline,
             std::chrono::milliseconds poll = std::chrono::milliseconds(100));

// Where the built binaries are (set by CMake).
std::string BinaryDir();
// The source tree's root (deploy/, docs/ ...).
std::string SourceDir();

}  // namespace mal::testing

#endif  // MAL_TESTS_TEST_UTIL_H_

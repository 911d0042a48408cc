// libFuzzer target: the one image decode path (container check, then OpenCV), as training
// batches, dataset checks and mal-serve's predict use it on files and uploaded bytes.

#include <cstddef>
#include <cstdint>
#include <string>

#include "common/image/image_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  (void)mal::image::CheckImageComplete(bytes);
  (void)mal::image::DecodeImageBytes(bytes, "fuzz", /*half_size=*/(size & 1) != 0);
  return 0;
}

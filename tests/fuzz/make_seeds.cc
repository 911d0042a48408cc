// Writes the binary seeds of the committed corpus (run by hand when the formats change):
//   make_fuzz_seeds SOURCE_DIR
// spec_proto/: the example specs (deploy/examples/*.yaml) serialised as protos;
// image_decode/: small JPEG, PNG and BMP images, and a truncated JPEG.

#include <filesystem>
#include <fstream>
#include <iostream>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <string>
#include <vector>

#include "common/spec/spec.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: make_fuzz_seeds SOURCE_DIR\n";
    return 2;
  }
  const std::filesystem::path src = argv[1];
  const auto corpus = src / "tests/fuzz/corpus";
  for (const auto& e : std::filesystem::directory_iterator(src / "deploy/examples")) {
    auto spec = mal::LoadSpecFile(e.path().string(), {});
    if (!spec.ok()) {
      std::cerr << spec.status() << "\n";
      return 1;
    }
    std::ofstream(corpus / "spec_proto" / (e.path().stem().string() + ".pb"), std::ios::binary)
        << spec->SerializeAsString();
  }
  cv::Mat image(24, 20, CV_8UC3);
  cv::randu(image, 0, 255);
  for (const char* ext : {".jpg", ".png", ".bmp"}) {
    std::vector<uchar> bytes;
    cv::imencode(ext, image, bytes);
    std::ofstream(corpus / "image_decode" / (std::string("small") + ext), std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    if (std::string(ext) == ".jpg") {
      std::ofstream(corpus / "image_decode" / "truncated.jpg", std::ios::binary)
          .write(reinterpret_cast<const char*>(bytes.data()), bytes.size() / 2);
    }
  }
  return 0;
}

#include "common/image/image_file.h"

#include <string>
#include <vector>

#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/data/reader.h"
#include "common/image/transforms.h"
#include "common/util/files.h"
#include "tests/test_util.h"

namespace mal::image {
namespace {

using ::testing::HasSubstr;

std::string Encode(const std::string& ext, const std::vector<int>& params = {}) {
  cv::Mat m(96, 80, CV_8UC3);
  cv::randu(m, cv::Scalar::all(0), cv::Scalar::all(255));  // noise: the data part is most of the file
  std::vector<uchar> buf;
  EXPECT_TRUE(cv::imencode(ext, m, buf, params));
  return std::string(buf.begin(), buf.end());
}

TEST(ImageFileTest, CompleteFilesPass) {
  EXPECT_TRUE(CheckImageComplete(Encode(".jpg")).ok());
  EXPECT_TRUE(CheckImageComplete(Encode(".jpg", {cv::IMWRITE_JPEG_PROGRESSIVE, 1})).ok());
  EXPECT_TRUE(CheckImageComplete(Encode(".jpg", {cv::IMWRITE_JPEG_RST_INTERVAL, 2})).ok());
  EXPECT_TRUE(CheckImageComplete(Encode(".jpg") + "trailing bytes after EOI").ok());
  EXPECT_TRUE(CheckImageComplete(Encode(".png")).ok());
  EXPECT_TRUE(CheckImageComplete(Encode(".bmp")).ok());
  EXPECT_TRUE(CheckImageComplete("not an image format we know").ok());  // the decoder decides
  // Stray bytes between segments (here after APP0, which OpenCV writes first): libjpeg skips
  // them and decodes the whole image.
  std::string padded = Encode(".jpg");
  ASSERT_EQ(padded.substr(2, 2), "\xFF\xE0");
  const size_t app0_end = 4 + ((static_cast<uint8_t>(padded[4]) << 8) | static_cast<uint8_t>(padded[5]));
  padded.insert(app0_end, std::string("\x00\x00", 2));
  EXPECT_TRUE(CheckImageComplete(padded).ok()) << CheckImageComplete(padded);
  // An OS/2 1.x bitmap header (12 bytes) is left to the decoder, however short the file.
  std::string os2("BM\x1e\0\0\0\0\0\0\0\x1a\0\0\0\x0c\0\0\0\x01\0\x01\0\x01\0\x18\0\xff\xff\xff\0", 30);
  EXPECT_TRUE(CheckImageComplete(os2).ok()) << CheckImageComplete(os2);
}

// The field report: a JPEG cut at 60% of its bytes decoded into a partly grey image.
TEST(ImageFileTest, TruncatedFilesOfEveryFormatAreRefusedWithTheReason) {
  for (const char* ext : {".jpg", ".png", ".bmp"}) {
    const std::string full = Encode(ext);
    for (double keep : {0.6, 0.95, 0.999}) {
      const std::string cut = full.substr(0, static_cast<size_t>(full.size() * keep));
      absl::Status s = CheckImageComplete(cut);
      EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << ext << " " << keep;
      EXPECT_THAT(std::string(s.message()), HasSubstr("truncated")) << ext << " " << keep;
    }
  }
  const std::string jpeg = Encode(".jpg", {cv::IMWRITE_JPEG_PROGRESSIVE, 1});
  EXPECT_FALSE(CheckImageComplete(jpeg.substr(0, jpeg.size() * 6 / 10)).ok());
  EXPECT_FALSE(CheckImageComplete(jpeg.substr(0, jpeg.size() - 2)).ok());  // just the EOI gone
}

// Found by the image_decode fuzzer: a JPEG whose header declares 65347 x 65279 px made OpenCV
// allocate 3.2 GB (at half size it passed OpenCV's own limit). Headers over kMaxImagePixels are
// refused before anything is allocated, in each format whose header we read.
TEST(ImageFileTest, HeadersDeclaringHugeImagesAreRefusedBeforeDecoding) {
  auto patch16 = [](std::string& b, size_t at, uint32_t v) {
    b[at] = static_cast<char>(v >> 8);
    b[at + 1] = static_cast<char>(v & 0xFF);
  };
  std::string jpeg = Encode(".jpg");
  const size_t sof = jpeg.find("\xFF\xC0");
  ASSERT_NE(sof, std::string::npos);
  patch16(jpeg, sof + 5, 65279);  // height
  patch16(jpeg, sof + 7, 65347);  // width
  absl::Status s = CheckImageComplete(jpeg);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(s.message()), HasSubstr("JPEG of 65347 x 65279 px is over the limit"));
  auto decoded = DecodeImageBytes(jpeg, "bomb.jpg", /*half_size=*/true);
  ASSERT_FALSE(decoded.ok());
  EXPECT_THAT(std::string(decoded.status().message()), HasSubstr("bomb.jpg: JPEG of 65347"));

  std::string png = Encode(".png");
  ASSERT_EQ(png.substr(12, 4), "IHDR");
  png.replace(16, 8, std::string("\x00\x01\x00\x00\x00\x01\x00\x00", 8));  // 65536 x 65536
  EXPECT_THAT(std::string(CheckImageComplete(png).message()),
              HasSubstr("PNG of 65536 x 65536 px is over the limit"));

  std::string bmp = Encode(".bmp");
  bmp.replace(18, 8, std::string("\x00\x40\x00\x00\x00\x40\x00\x00", 8));  // 16384 x 16384
  EXPECT_THAT(std::string(CheckImageComplete(bmp).message()),
              HasSubstr("BMP of 16384 x 16384 px is over the limit"));
  // An OS/2 1.x bitmap header (16-bit sizes) is checked too.
  std::string os2("BM\x1e\0\0\0\0\0\0\0\x1a\0\0\0\x0c\0\0\0\xff\xff\xff\xff\x01\0\x18\0", 26);
  EXPECT_THAT(std::string(CheckImageComplete(os2).message()),
              HasSubstr("BMP of 65535 x 65535 px is over the limit"));
  // The CI run's find: a SOF past bytes that a segment walk skips (a decoder resyncs on them).
  const std::string hidden = *ReadFile(
      testing::SourceDir() + "/tests/fuzz/corpus/image_decode/regression-jpeg-bomb-hidden-sof");
  EXPECT_THAT(std::string(CheckImageComplete(hidden).message()),
              HasSubstr("JPEG of 65347 x 65279 px is over the limit"));
  // The sizes themselves, for a caller's own limit (mal-serve's max_pixels).
  EXPECT_EQ(DeclaredImageSize(png).width, 65536u);
  EXPECT_STREQ(DeclaredImageSize(bmp).format, "BMP");
  EXPECT_EQ(DeclaredImageSize(jpeg).height, 65279u);
  EXPECT_EQ(DeclaredImageSize("not an image").width, 0u);
  // 8192 x 8192 is allowed: the limit is exclusive of nothing a real dataset has.
  EXPECT_LE(uint64_t{8192} * 8192, kMaxImagePixels);
}

// Found by the image_decode fuzzer: bytes that OpenCV handed to GDCM (its DICOM plugin) aborted
// the process in an assert. Only the formats face datasets use reach OpenCV.
TEST(ImageFileTest, OnlyJpegPngAndBmpReachTheDecoder) {
  EXPECT_TRUE(IsSupportedImage(Encode(".jpg")));
  EXPECT_TRUE(IsSupportedImage(Encode(".png")));
  EXPECT_TRUE(IsSupportedImage(Encode(".bmp")));
  EXPECT_FALSE(IsSupportedImage(Encode(".tiff")));
  EXPECT_FALSE(IsSupportedImage(std::string("RIFF\x10\0\0\0WEBPVP8 ", 16)));
  EXPECT_FALSE(IsSupportedImage(Encode(".ppm")));
  EXPECT_FALSE(IsSupportedImage("IMAGINE_RAW\xa1" "FI\xff\xff"));
  const std::string dicom_like = *ReadFile(testing::SourceDir() +
                                           "/tests/fuzz/corpus/image_decode/regression-gdcm-abort");
  auto refused = DecodeImageBytes(dicom_like, "upload.jpg");
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(refused.status().message()),
              HasSubstr("upload.jpg: not a JPEG, PNG or BMP image"));
}

TEST(ImageFileTest, DecodingAndVerifyingNameThePathAndTheReason) {
  testing::TempDir dir;
  const std::string full = Encode(".jpg");
  testing::WriteText(dir / "Image/aligned/train_00001_aligned.jpg", full);
  testing::WriteText(dir / "Image/aligned/train_00002_aligned.jpg", full.substr(0, full.size() * 6 / 10));
  testing::WriteText(dir / "EmoLabel/list_patition_label.txt", "train_00001.jpg 1\ntrain_00002.jpg 2\n");

  auto bad = DecodeImage(dir / "Image/aligned/train_00002_aligned.jpg");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("train_00002_aligned.jpg: truncated JPEG"));
  EXPECT_TRUE(DecodeImage(dir / "Image/aligned/train_00001_aligned.jpg").ok());

  data::ReaderOptions o;
  o.root = dir.path();
  o.verify_images = true;
  auto index = data::LoadDataset("rafdb", o, data::DataRole::kFe);
  ASSERT_TRUE(index.ok()) << index.status();
  EXPECT_EQ(index->samples.size(), 1u);
  const auto& skip = index->report.skips().at("unreadable_image");
  EXPECT_EQ(skip.count, 1);
  EXPECT_THAT(skip.examples[0], HasSubstr("train_00002_aligned.jpg: truncated JPEG"));
}

}  // namespace
}  // namespace mal::image

#include "common/image/transforms.h"

#include <vector>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/test_util.h"

namespace mal::image {
namespace {

// A 4x4 image whose left half is red and right half blue (BGR storage).
cv::Mat HalfRedHalfBlue() {
  cv::Mat m(4, 4, CV_8UC3, cv::Scalar(255, 0, 0));
  m(cv::Rect(0, 0, 2, 4)).setTo(cv::Scalar(0, 0, 255));
  return m;
}

TEST(TransformsTest, EvaluationIsChannelMajorRgbNormalised) {
  TransformOptions o;
  o.resize = 4;
  o.crop = 4;
  std::vector<float> out(3 * 16);
  TransformToTensor(HalfRedHalfBlue(), o, nullptr, out.data());
  // Pixel (0,0) is red: R = 255.
  EXPECT_NEAR(out[0], (1.0f - 0.485f) / 0.229f, 1e-5);
  EXPECT_NEAR(out[16], (0.0f - 0.456f) / 0.224f, 1e-5);
  EXPECT_NEAR(out[32], (0.0f - 0.406f) / 0.225f, 1e-5);
  // Pixel (0,3) is blue.
  EXPECT_NEAR(out[3], (0.0f - 0.485f) / 0.229f, 1e-5);
  EXPECT_NEAR(out[32 + 3], (1.0f - 0.406f) / 0.225f, 1e-5);
}

TEST(TransformsTest, TrainingFlipAndCropComeFromTheRng) {
  TransformOptions o;
  o.resize = 4;
  o.crop = 4;
  std::vector<float> out(3 * 16);
  bool saw_flip = false, saw_plain = false;
  for (uint64_t seed = 0; seed < 20; ++seed) {
    Rng rng(seed);
    TransformToTensor(HalfRedHalfBlue(), o, &rng, out.data());
    (out[0] > 0 ? saw_plain : saw_flip) = true;
  }
  EXPECT_TRUE(saw_flip);
  EXPECT_TRUE(saw_plain);
  o.hflip = false;
  for (uint64_t seed = 0; seed < 20; ++seed) {
    Rng rng(seed);
    TransformToTensor(HalfRedHalfBlue(), o, &rng, out.data());
    EXPECT_GT(out[0], 0);
  }
}

TEST(TransformsTest, EvaluationCropIsCentred) {
  cv::Mat m(8, 8, CV_8UC3, cv::Scalar(0, 0, 0));
  m.at<cv::Vec3b>(2, 2) = cv::Vec3b(255, 255, 255);
  TransformOptions o;
  o.resize = 8;
  o.crop = 4;
  o.mean[0] = o.mean[1] = o.mean[2] = 0;
  o.std[0] = o.std[1] = o.std[2] = 1;
  std::vector<float> out(3 * 16);
  TransformToTensor(m, o, nullptr, out.data());
  EXPECT_FLOAT_EQ(out[0], 1.0f);  // (2,2) is the crop's origin
  EXPECT_FLOAT_EQ(out[1], 0.0f);
}

TEST(TransformsTest, DecodeErrorsNameTheFile) {
  testing::TempDir dir;
  testing::WriteText(dir / "bad.jpg", "garbage");
  auto bad = DecodeImage(dir / "bad.jpg");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()), ::testing::HasSubstr("bad.jpg"));
  EXPECT_FALSE(DecodeImage(dir / "none.jpg").ok());
  EXPECT_FALSE(DecodeImageBytes("xyz", "upload").ok());
  testing::WriteImage(dir / "ok.png", 10);
  auto ok = DecodeImage(dir / "ok.png");
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->cols, 10);
}

TEST(TransformsTest, DecodesTheImageKindsPhotosComeIn) {
  testing::TempDir dir;
  cv::Mat gray(20, 30, CV_8UC1, cv::Scalar(90));
  cv::Mat rgba(20, 30, CV_8UC4, cv::Scalar(10, 20, 30, 128));
  cv::Mat deep(20, 30, CV_16UC3, cv::Scalar(60000, 30000, 0));
  ASSERT_TRUE(cv::imwrite(dir / "gray.jpg", gray));
  ASSERT_TRUE(cv::imwrite(dir / "rgba.png", rgba));
  ASSERT_TRUE(cv::imwrite(dir / "deep.png", deep));
  TransformOptions o;
  o.resize = 16;
  o.crop = 12;
  std::vector<float> out(3 * 12 * 12);
  for (const char* name : {"gray.jpg", "rgba.png", "deep.png"}) {
    auto m = DecodeImage(dir / name);
    ASSERT_TRUE(m.ok()) << name;
    EXPECT_EQ(m->type(), CV_8UC3) << name;
    Rng rng(1);
    TransformToTensor(*m, o, &rng, out.data());  // smaller or larger than resize: both fine
  }
  auto deep_decoded = DecodeImage(dir / "deep.png");
  EXPECT_GT(deep_decoded->at<cv::Vec3b>(0, 0)[0], 200);  // 16-bit scaled down, not truncated
  testing::WriteText(dir / "empty.jpg", "");
  EXPECT_FALSE(DecodeImage(dir / "empty.jpg").ok());
}

TEST(TransformsTest, CropBoxClipsToImage) {
  cv::Mat m(10, 10, CV_8UC3);
  int box[4] = {6, 6, 10, 10};
  EXPECT_EQ(CropBox(m, box).size(), cv::Size(4, 4));
  int none[4] = {0, 0, 0, 0};
  EXPECT_EQ(CropBox(m, none).size(), cv::Size(10, 10));
}

}  // namespace
}  // namespace mal::image

#include "server/serve/au_detection.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <opencv2/imgcodecs.hpp>

#include "common/synth/face_renderer.h"
#include "common/util/random.h"
#include "tests/test_util.h"
#include "tests/worker/engine/model_fixture.h"

namespace mal::serve {
namespace {

using ::testing::HasSubstr;

// A SynthFace face as JPEG bytes, size x size px.
std::string FaceJpeg(int size, uint64_t seed) {
  Rng rng(seed);
  synth::FaceState state;
  state.identity = synth::RandomIdentity(rng);
  std::vector<uchar> bytes;
  cv::imencode(".jpg", synth::RenderFace(state, size), bytes);
  return std::string(bytes.begin(), bytes.end());
}

class AuDetectionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::WriteTestModel(dir_ / "m");
    auto model = engine::AuModel::Load(dir_ / "m");
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model);
    auto detector = image::FaceDetector::Load();
    ASSERT_TRUE(detector.ok()) << detector.status();
    detector_ = std::move(*detector);
  }
  testing::TempDir dir_;
  std::unique_ptr<engine::AuModel> model_;
  std::unique_ptr<image::FaceDetector> detector_;
};

TEST_F(AuDetectionTest, OneBadImageIsAnErrorInItsSlotOnly) {
  v1::DetectActionUnitsRequest req;
  req.set_model("m");
  req.add_images()->set_encoded(FaceJpeg(160, 1));
  const std::string face = FaceJpeg(160, 2);
  req.add_images()->set_encoded(face.substr(0, face.size() / 2));  // truncated
  req.add_images()->set_encoded("not an image");
  cv::Mat blank(100, 100, CV_8UC3, cv::Scalar(128, 128, 128));
  v1::RawFrame* raw = req.add_images()->mutable_raw();
  raw->set_width(100);
  raw->set_height(100);
  raw->set_channels(3);
  raw->set_pixels(std::string(reinterpret_cast<const char*>(blank.data), 100 * 100 * 3));
  v1::RawFrame* short_raw = req.add_images()->mutable_raw();
  *short_raw = *raw;
  short_raw->set_height(101);
  req.mutable_images(0)->set_id("face.jpg");

  auto res = DetectActionUnits(*model_, detector_.get(), req);
  ASSERT_TRUE(res.ok()) << res.status();
  ASSERT_EQ(res->results_size(), 5);
  EXPECT_EQ(std::vector<int>(res->aus().begin(), res->aus().end()),
            (std::vector<int>{1, 2, 4, 12}));
  const v1::ImageResult& good = res->results(0);
  EXPECT_EQ(good.id(), "face.jpg");
  EXPECT_EQ(good.code(), 0);
  EXPECT_EQ(good.width(), 160);
  ASSERT_EQ(good.faces_size(), 1);
  EXPECT_TRUE(good.faces(0).success());
  EXPECT_GT(good.faces(0).box().width(), 80);
  ASSERT_EQ(good.faces(0).aus_size(), 4);
  for (const auto& a : good.faces(0).aus()) {
    EXPECT_GT(a.probability(), 0);
    EXPECT_LT(a.probability(), 1);
    EXPECT_EQ(a.present(), a.probability() >= 0.5f);
  }
  EXPECT_EQ(res->results(1).code(), 3);
  EXPECT_THAT(res->results(1).message(), HasSubstr("image 1"));  // no id: its place
  EXPECT_THAT(res->results(1).message(), HasSubstr("truncated JPEG"));
  EXPECT_EQ(res->results(2).code(), 3);
  EXPECT_EQ(res->results(3).code(), 0);  // a grey frame: read, no face
  EXPECT_EQ(res->results(3).faces_size(), 0);
  EXPECT_EQ(res->results(4).code(), 3);
  EXPECT_THAT(res->results(4).message(), HasSubstr("30000 bytes"));
}

TEST_F(AuDetectionTest, FaceCropsSkipDetectionAndMatchThePredictorOnTheWholeImage) {
  v1::DetectActionUnitsRequest req;
  req.set_face_crop(true);
  const std::string jpeg = FaceJpeg(96, 3);
  req.add_images()->set_encoded(jpeg);
  auto res = DetectActionUnits(*model_, nullptr, req);
  ASSERT_TRUE(res.ok()) << res.status();
  const v1::FaceResult& f = res->results(0).faces(0);
  EXPECT_EQ(f.box().width(), 96);
  EXPECT_EQ(f.confidence(), 1.0f);
  auto direct = model_->Predict(
      {cv::imdecode(std::vector<uchar>(jpeg.begin(), jpeg.end()), cv::IMREAD_COLOR)});
  ASSERT_TRUE(direct.ok());
  for (int j = 0; j < 4; ++j) EXPECT_FLOAT_EQ(f.aus(j).probability(), (*direct)[j]);
}

TEST_F(AuDetectionTest, BatchLimitsAndAMissingDetector) {
  v1::DetectActionUnitsRequest req;
  for (int i = 0; i < 3; ++i) req.add_images()->set_encoded("x");
  DetectLimits limits;
  limits.max_images = 2;
  EXPECT_EQ(DetectActionUnits(*model_, detector_.get(), req, limits).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(DetectActionUnits(*model_, nullptr, req).status().code(),
            absl::StatusCode::kFailedPrecondition);
  limits = DetectLimits();
  limits.max_pixels = 100;
  v1::DetectActionUnitsRequest big;
  big.add_images()->set_encoded(FaceJpeg(64, 1));
  auto res = DetectActionUnits(*model_, detector_.get(), big, limits);
  ASSERT_TRUE(res.ok());
  EXPECT_EQ(res->results(0).code(), 3);
  EXPECT_THAT(res->results(0).message(), HasSubstr("over the limit"));
  // The header is read first: half a JPEG whose header is over the limit is refused for its size,
  // before the decoder would see it is truncated.
  const std::string jpeg = FaceJpeg(64, 1);
  big.mutable_images(0)->set_encoded(jpeg.substr(0, jpeg.size() / 2));
  big.mutable_images(0)->set_id("half.jpg");
  res = DetectActionUnits(*model_, detector_.get(), big, limits);
  ASSERT_TRUE(res.ok());
  EXPECT_THAT(res->results(0).message(), HasSubstr("half.jpg: 64x64 px is over the limit of 100"));
}

}  // namespace
}  // namespace mal::serve

#include "common/image/face_detector.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <opencv2/imgproc.hpp>

#include "common/synth/face_renderer.h"
#include "common/util/random.h"

namespace mal::image {
namespace {

using ::testing::HasSubstr;

// A SynthFace face (eyes, brows, nose, mouth drawn in a frontal pose), size x size px, BGR.
cv::Mat Face(int size, uint64_t seed) {
  Rng rng(seed);
  synth::FaceState state;
  state.identity = synth::RandomIdentity(rng);
  return synth::RenderFace(state, size);
}

TEST(FaceDetectorTest, LoadNamesAMissingOrBadCascade) {
  auto missing = FaceDetector::Load("/nonexistent/cascade.xml");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("/nonexistent/cascade.xml"));
  auto bad = FaceDetector::Load("/etc/hostname");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("/etc/hostname"));
}

TEST(FaceDetectorTest, OneFaceTwoFacesAndNone) {
  auto detector = FaceDetector::Load();
  ASSERT_TRUE(detector.ok()) << detector.status();

  const cv::Mat one = Face(160, 1);
  std::vector<DetectedFace> faces = (*detector)->Detect(one);
  ASSERT_EQ(faces.size(), 1u);
  EXPECT_GT(faces[0].box.width, 80);  // the face, not a part of it
  EXPECT_GT(faces[0].confidence, 0.3f);
  EXPECT_LE(faces[0].confidence, 1.0f);

  // Two faces of different sizes on one canvas: both, the larger first.
  cv::Mat two(240, 420, CV_8UC3, cv::Scalar(90, 90, 90));
  Face(200, 2).copyTo(two(cv::Rect(10, 20, 200, 200)));
  Face(140, 3).copyTo(two(cv::Rect(260, 50, 140, 140)));
  faces = (*detector)->Detect(two);
  ASSERT_EQ(faces.size(), 2u);
  EXPECT_GT(faces[0].box.area(), faces[1].box.area());
  EXPECT_LT(faces[0].box.x, 210);
  EXPECT_GT(faces[1].box.x, 250);

  // A grey gradient and a face too small for min_face: nothing.
  cv::Mat blank(200, 200, CV_8UC3);
  for (int y = 0; y < blank.rows; ++y) blank.row(y).setTo(cv::Scalar(y, y, y));
  EXPECT_TRUE((*detector)->Detect(blank).empty());
  EXPECT_TRUE((*detector)->Detect(one, /*min_face=*/170).empty());
  EXPECT_TRUE((*detector)->Detect(cv::Mat()).empty());

  // Grey input works like BGR.
  cv::Mat gray;
  cv::cvtColor(one, gray, cv::COLOR_BGR2GRAY);
  EXPECT_EQ((*detector)->Detect(gray).size(), 1u);
}

TEST(FaceDetectorTest, CropBoxAddsTheMarginSquaresAndStaysInside) {
  // 100 px face in the middle of a 400 px image: 150 px square around the same centre.
  EXPECT_EQ(FaceCropBox(cv::Rect(150, 150, 100, 100), cv::Size(400, 400)),
            cv::Rect(125, 125, 150, 150));
  // A non-square box is squared on its longer side.
  EXPECT_EQ(FaceCropBox(cv::Rect(150, 150, 80, 100), cv::Size(400, 400), 0),
            cv::Rect(140, 150, 100, 100));
  // At the corner: shifted inside, not cut.
  EXPECT_EQ(FaceCropBox(cv::Rect(0, 0, 100, 100), cv::Size(400, 300)), cv::Rect(0, 0, 150, 150));
  EXPECT_EQ(FaceCropBox(cv::Rect(330, 230, 70, 70), cv::Size(400, 300)),
            cv::Rect(295, 195, 105, 105));
  // Larger than the image: the image's shorter side.
  EXPECT_EQ(FaceCropBox(cv::Rect(10, 10, 90, 90), cv::Size(120, 100)), cv::Rect(5, 0, 100, 100));
}

}  // namespace
}  // namespace mal::image

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
  Face(200, 5).copyTo(two(cv::Rect(10, 20, 200, 200)));
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

// A tray of shaded, speckled discs (coins, buttons, pebbles), 400 x 300 px grey: textures that
// OpenCV's "default" frontal face cascade boxes as faces (7 boxes on these 12 trays).
cv::Mat Discs(uint64_t seed) {
  cv::RNG rng(seed);
  cv::Mat image(300, 400, CV_8UC1, cv::Scalar(60));
  for (int k = 0; k < 14; ++k) {
    const cv::Point c(rng.uniform(30, 370), rng.uniform(30, 270));
    const int r = rng.uniform(18, 34);
    cv::circle(image, c, r, cv::Scalar(rng.uniform(150, 220)), -1, cv::LINE_AA);
    cv::circle(image, c, r, cv::Scalar(230), 2, cv::LINE_AA);
    for (int q = 0; q < 6; ++q) {
      const cv::Point p = c + cv::Point(rng.uniform(-r / 2, r / 2), rng.uniform(-r / 2, r / 2));
      cv::circle(image, p, rng.uniform(2, 6), cv::Scalar(rng.uniform(80, 140)), -1, cv::LINE_AA);
    }
  }
  cv::Mat noise(image.size(), CV_8UC1);
  cv::randn(noise, 0, 12);
  image += noise;
  cv::GaussianBlur(image, image, cv::Size(0, 0), 1.0);
  return image;
}

TEST(FaceDetectorTest, TexturedDiscsAreNotFaces) {
  auto detector = FaceDetector::Load();
  ASSERT_TRUE(detector.ok()) << detector.status();
  int boxes = 0;
  for (uint64_t seed = 1; seed <= 12; ++seed) {
    boxes += static_cast<int>((*detector)->Detect(Discs(seed), /*min_face=*/30).size());
  }
  EXPECT_LE(boxes, 2) << "false faces on 12 trays of discs";
}

TEST(FaceDetectorTest, ConfidenceIsTheMarginOverTheLastStage) {
  auto detector = FaceDetector::Load();
  ASSERT_TRUE(detector.ok()) << detector.status();
  // alt's last (22nd) stage threshold, as the file states it.
  EXPECT_NEAR((*detector)->last_stage_threshold(), 105.7611, 1e-3);
  // An old-format cascade (stage_threshold) still reads.
  auto old_format = FaceDetector::Load(
      "/usr/share/opencv4/haarcascades/haarcascade_licence_plate_rus_16stages.xml");
  ASSERT_TRUE(old_format.ok()) << old_format.status();
  EXPECT_NE((*old_format)->last_stage_threshold(), 0);
  // The previous default ("default", 25 stages) has a negative last threshold.
  auto other =
      FaceDetector::Load("/usr/share/opencv4/haarcascades/haarcascade_frontalface_default.xml");
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_NEAR((*other)->last_stage_threshold(), -2.9928, 1e-3);
  for (const auto& face : (*detector)->Detect(Face(160, 4))) {
    EXPECT_GT(face.confidence, 0.0f);
    EXPECT_LT(face.confidence, 1.0f);
  }
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

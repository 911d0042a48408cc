#include "common/synth/face_renderer.h"

#include <opencv2/imgproc.hpp>
#include <gtest/gtest.h>

namespace mal::synth {
namespace {

constexpr int kSize = 112;
constexpr int kChanged = 12;  // grey-level difference that counts as a visible change

FaceState Neutral(uint64_t seed) {
  Rng rng(seed);
  FaceState s;
  s.identity = RandomIdentity(rng);
  return s;
}

cv::Mat ChangedPixels(const cv::Mat& a, const cv::Mat& b) {
  cv::Mat diff, gray;
  cv::absdiff(a, b, diff);
  cv::cvtColor(diff, gray, cv::COLOR_BGR2GRAY);
  // Any channel counts: take the max over channels.
  std::vector<cv::Mat> ch;
  cv::split(diff, ch);
  cv::Mat m = cv::max(cv::max(ch[0], ch[1]), ch[2]);
  return m > kChanged;
}

class AuEffectTest : public ::testing::TestWithParam<int> {};

TEST_P(AuEffectTest, ChangesPixelsInItsOwnRegionOnly) {
  const int au = GetParam();
  for (uint64_t seed : {1, 2, 3, 4, 5}) {
    FaceState base = Neutral(seed);
    FaceState with = base;
    with.au[SynthAuSlot(au)] = 1.0;
    const cv::Mat changed = ChangedPixels(RenderFace(base, kSize), RenderFace(with, kSize));
    const cv::Rect region = AuRegion(au, base.identity, kSize);
    cv::Mat outside = changed.clone();
    // One pixel of slack around the region for anti-aliasing.
    outside(cv::Rect(region.x - 1, region.y - 1, region.width + 2, region.height + 2) &
            cv::Rect(0, 0, kSize, kSize))
        .setTo(0);
    const int inside_count = cv::countNonZero(changed(region));
    EXPECT_GE(inside_count, 8) << "AU" << au << " seed " << seed << " is not visible";
    EXPECT_LE(cv::countNonZero(outside), 1) << "AU" << au << " seed " << seed
                                            << " changes pixels outside its region";
  }
}

TEST_P(AuEffectTest, IntensityZeroAndOneDifferAndLowIntensityIsSubtler) {
  const int au = GetParam();
  FaceState base = Neutral(11);
  FaceState low = base, high = base;
  low.au[SynthAuSlot(au)] = 0.3;
  high.au[SynthAuSlot(au)] = 1.0;
  const cv::Mat b = RenderFace(base, kSize);
  cv::Mat d_low, d_high;
  cv::absdiff(b, RenderFace(low, kSize), d_low);
  cv::absdiff(b, RenderFace(high, kSize), d_high);
  const double s_low = cv::sum(d_low)[0] + cv::sum(d_low)[1] + cv::sum(d_low)[2];
  const double s_high = cv::sum(d_high)[0] + cv::sum(d_high)[1] + cv::sum(d_high)[2];
  EXPECT_GT(s_low, 0) << "AU" << au;
  EXPECT_GT(s_high, s_low) << "AU" << au;
}

INSTANTIATE_TEST_SUITE_P(AllSynthAus, AuEffectTest, ::testing::ValuesIn(kSynthAus),
                         [](const auto& info) { return "AU" + std::to_string(info.param); });

TEST(FaceRendererTest, SameStateSamePixelsIncludingNoise) {
  Rng rng(9);
  FaceState s = Neutral(9);
  s.appearance = RandomAppearance(rng, 1.0);
  s.appearance.noise_sigma = 5;
  const cv::Mat a = RenderFace(s, 64), b = RenderFace(s, 64);
  EXPECT_EQ(cv::norm(a, b, cv::NORM_INF), 0);
  s.appearance.noise_seed += 1;
  EXPECT_GT(cv::norm(a, RenderFace(s, 64), cv::NORM_INF), 0);
}

TEST(FaceRendererTest, OccluderHidesTheRegionsItCovers) {
  FaceState s = Neutral(3);
  const Identity& id = s.identity;
  s.appearance.occluder = true;
  s.appearance.occluder_center = {0.5, id.mouth_y};
  s.appearance.occluder_axes = {0.25, 0.12};
  EXPECT_GT(OccludedShare(12, id, s.appearance), 0.5);
  EXPECT_EQ(OccludedShare(1, id, s.appearance), 0.0);
  s.appearance.occluder = false;
  EXPECT_EQ(OccludedShare(12, id, s.appearance), 0.0);
}

TEST(FaceRendererTest, SlotsCoverTheTwelveBp4dAus) {
  for (int au : {1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24}) EXPECT_GE(SynthAuSlot(au), 0) << au;
  EXPECT_EQ(SynthAuSlot(5), -1);
}

}  // namespace
}  // namespace mal::synth

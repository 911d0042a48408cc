#ifndef MAL_COMMON_SYNTH_FACE_RENDERER_H_
#define MAL_COMMON_SYNTH_FACE_RENDERER_H_

#include <array>
#include <cstdint>

#include <opencv2/core.hpp>

#include "common/util/random.h"

namespace mal::synth {

// The AUs SynthFace draws, each with its own visible effect. Index into FaceState::au.
inline constexpr std::array<int, 15> kSynthAus = {1,  2,  4,  6,  7,  9,  10, 12,
                                                  14, 15, 17, 23, 24, 25, 26};
// Position of `au` in kSynthAus, or -1.
int SynthAuSlot(int au);

// A subject's fixed appearance, in units of the image side (0..1) and BGR colours.
struct Identity {
  cv::Scalar skin, hair, background, lips, iris;
  double face_half_width = 0.33, face_half_height = 0.43;
  double eye_y = 0.42, eye_dx = 0.15, eye_half_width = 0.06, eye_half_height = 0.028;
  double brow_gap = 0.075;  // brow height above the eye centre
  double brow_length = 0.12, brow_thickness = 0.018;
  double nose_length = 0.15, mouth_y = 0.72, mouth_half_width = 0.12, lip_thickness = 0.02;
  double hair_line = 0.18;
};

// Everything that varies per image besides identity.
struct Appearance {
  double rotation_deg = 0, scale = 1, shift_x = 0, shift_y = 0;  // pose (shift in image sides)
  double light_angle = 0, light_strength = 0, brightness = 1;    // directional light
  double noise_sigma = 0;                                        // grey levels
  double blur_sigma = 0;
  // Occluder: an ellipse (a hand, a microphone, a strand of hair) over part of the face.
  bool occluder = false;
  cv::Point2d occluder_center;   // image sides
  cv::Size2d occluder_axes;      // image sides
  double occluder_angle = 0;
  cv::Scalar occluder_color;
  uint64_t noise_seed = 0;
};

// One face to draw: identity, AU intensities in [0, 1] (0 = absent), appearance.
struct FaceState {
  Identity identity;
  std::array<double, kSynthAus.size()> au{};
  Appearance appearance;
};

// Draws a random identity.
Identity RandomIdentity(Rng& rng);
// Draws a random pose, light, noise, blur and (with `occluder_probability`) an occluder.
Appearance RandomAppearance(Rng& rng, double occluder_probability);

// Renders `state` as a size x size BGR image. Pure: the same state gives the same pixels.
cv::Mat RenderFace(const FaceState& state, int size);

// The image rectangle where `au` acts on a neutral-pose face of `identity` (no pose applied):
// outside it the AU changes no pixel. Used by tests and the preview.
cv::Rect AuRegion(int au, const Identity& identity, int size);

// The share of `au`'s region that the occluder of `appearance` covers (0 without one).
double OccludedShare(int au, const Identity& identity, const Appearance& appearance);

}  // namespace mal::synth

#endif  // MAL_COMMON_SYNTH_FACE_RENDERER_H_

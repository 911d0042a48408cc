#ifndef MAL_COMMON_SYNTH_SYNTH_DATASET_H_
#define MAL_COMMON_SYNTH_SYNTH_DATASET_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace mal::synth {

// Changes whenever the same options would draw different images or labels; written to
// DIR/synthface.txt as "generator N", so a cache made by an older generator is recognised.
inline constexpr int kSynthFaceGenerator = 3;

// What `malctl data synth` generates (docs/synthface.md).
struct SynthOptions {
  std::string out;
  // Defaults: a miniature of BP4D + RAF-DB in subjects and balance (docs/synthface.md): 24 AU
  // subjects (a fold trains on 16; with 6 no detector generalised to a new face), 80 frames each.
  int au_subjects = 24;    // BP4D-style subjects, named from the standard 3-fold lists
  int frames = 80;         // per AU subject, spread over tasks T1..T8
  int fe_subjects = 300;   // identities of the FE images
  int fe_images = 3000;    // train + test
  double ambiguous = 0.3;  // share of FE images with weak, partial or no AU evidence
  double fe_test_fraction = 0.2;
  double occluder_probability = 0.1;
  int size = 112;
  uint64_t seed = 1;
  int threads = 0;         // 0 = all cores
  int annotators = 40;
  bool force = false;      // replace an existing non-empty `out`
};

struct SynthSummary {
  int64_t au_images = 0;
  int64_t fe_images = 0;
  double seconds = 0;
};

// Writes OUT/au in the BP4D layout and OUT/fe in the RAF-DB layout (with the annotator
// distribution file), plus synth_truth.csv files with the true AU intensities. Deterministic for
// a seed: the same options give the same bytes. Built in OUT.partial-PID and renamed into place,
// so an interrupted run leaves no half dataset at OUT.
absl::StatusOr<SynthSummary> GenerateSynthFace(const SynthOptions& options);

// A PNG sheet showing every AU at full and low intensity on one face, each expression clear and
// ambiguous (with its consistency), and random frames with pose, light, noise and occluders.
absl::Status WritePreviewSheet(const std::string& path, uint64_t seed, int size);

}  // namespace mal::synth

#endif  // MAL_COMMON_SYNTH_SYNTH_DATASET_H_

#ifndef MAL_COMMON_SYNTH_ANNOTATORS_H_
#define MAL_COMMON_SYNTH_ANNOTATORS_H_

#include <array>
#include <vector>

#include "common/data/expression.h"
#include "common/synth/face_renderer.h"
#include "common/util/random.h"

namespace mal::synth {

// The prototypical AUs of each canonical expression (design.md): happy 6+12, sad 1+4+15,
// surprise 1+2+25+26, anger 4+7+23+24, disgust 9+10+17, fear 1+2+4+25, neutral none.
const std::vector<int>& PrototypeAus(int expression);

// The result of a simulated annotation round.
struct Votes {
  std::array<int, data::kNumExpressions> counts{};  // canonical order
  int label = 0;             // majority (ties to the lower canonical index)
  double consistency = 0;    // counts[label] / annotators
};

// `annotators` people look at the *visible* AU evidence (intensity times the unoccluded share) and
// vote. Clear evidence for one expression gives agreement; weak, partial or hidden evidence gives
// disagreement, hence low consistency. `context` (the intended expression, or -1) adds a pull
// towards it, like cues other than the face's muscles would: 0.15 on the evidence score with a
// clear face, up to 0.40 when no AU is visible, so an ambiguous face often carries a label it does
// not show (RAF-DB's in-the-wild photos).
Votes SimulateAnnotators(const std::array<double, kSynthAus.size()>& visible, int context,
                         int annotators, Rng& rng);

}  // namespace mal::synth

#endif  // MAL_COMMON_SYNTH_ANNOTATORS_H_

#ifndef MAL_COMMON_DATA_EXPRESSION_H_
#define MAL_COMMON_DATA_EXPRESSION_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace mal::data {

// The canonical order of the 7 basic expressions. Every reader maps its own codes into it through
// the tables in expression.cc; nothing else knows a dataset's numbering.
enum Expression : int {
  kNeutral = 0,
  kHappiness = 1,
  kSadness = 2,
  kSurprise = 3,
  kFear = 4,
  kDisgust = 5,
  kAnger = 6,
};
inline constexpr int kNumExpressions = 7;

// "neutral", "happiness", ...; "unknown" outside 0..6.
const char* ExpressionName(int expression);

// Accepts canonical names, common short forms (happy, sad, angry, surprised, ...) and digits 0..6.
absl::StatusOr<int> ParseExpression(absl::string_view text);

// RAF-DB basic labels 1..7 (Surprise, Fear, Disgust, Happiness, Sadness, Anger, Neutral).
// Returns -1 outside 1..7.
int ExpressionFromRafDb(int label);
// The inverse, for writers of the RAF-DB layout: canonical -> 1..7.
int RafDbFromExpression(int expression);

// AffectNet codes 0..6 (Neutral, Happy, Sad, Surprise, Fear, Disgust, Anger). Contempt (7),
// None (8), Uncertain (9), Non-Face (10) are not basic expressions: -1.
int ExpressionFromAffectNet(int code);

}  // namespace mal::data

#endif  // MAL_COMMON_DATA_EXPRESSION_H_

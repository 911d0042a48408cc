#include "common/data/expression.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace mal::data {
namespace {

constexpr const char* kNames[kNumExpressions] = {"neutral", "happiness", "sadness", "surprise",
                                                 "fear",    "disgust",   "anger"};
// RAF-DB label - 1 -> canonical.
constexpr int kFromRaf[7] = {kSurprise, kFear, kDisgust, kHappiness, kSadness, kAnger, kNeutral};
// AffectNet code -> canonical.
constexpr int kFromAffectNet[7] = {kNeutral, kHappiness, kSadness, kSurprise,
                                   kFear,    kDisgust,   kAnger};

}  // namespace

const char* ExpressionName(int expression) {
  if (expression < 0 || expression >= kNumExpressions) return "unknown";
  return kNames[expression];
}

absl::StatusOr<int> ParseExpression(absl::string_view text) {
  const std::string t = absl::AsciiStrToLower(absl::StripAsciiWhitespace(text));
  if (t.size() == 1 && t[0] >= '0' && t[0] < '0' + kNumExpressions) return t[0] - '0';
  for (int i = 0; i < kNumExpressions; ++i) {
    if (t == kNames[i]) return i;
  }
  static const struct {
    const char* alias;
    int expression;
  } kAliases[] = {{"happy", kHappiness}, {"sad", kSadness},    {"surprised", kSurprise},
                  {"fearful", kFear},    {"afraid", kFear},    {"disgusted", kDisgust},
                  {"angry", kAnger},     {"neutrality", kNeutral}};
  for (const auto& a : kAliases) {
    if (t == a.alias) return a.expression;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown expression '", text,
      "' (expected neutral, happiness, sadness, surprise, fear, disgust, anger or 0..6)"));
}

int ExpressionFromRafDb(int label) { return label >= 1 && label <= 7 ? kFromRaf[label - 1] : -1; }

int RafDbFromExpression(int expression) {
  for (int i = 0; i < 7; ++i) {
    if (kFromRaf[i] == expression) return i + 1;
  }
  return -1;
}

int ExpressionFromAffectNet(int code) { return code >= 0 && code <= 6 ? kFromAffectNet[code] : -1; }

}  // namespace mal::data

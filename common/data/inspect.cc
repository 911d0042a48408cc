#include "common/data/inspect.h"

#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/data/expression.h"

namespace mal::data {

v1::DatasetInspection Inspect(const DatasetIndex& index, const std::string& protocol,
                              const std::vector<Fold>& folds) {
  v1::DatasetInspection out;
  out.set_format(index.format);
  out.set_root(index.root);
  for (int au : index.aus) out.add_aus(au);
  out.set_samples(static_cast<int64_t>(index.samples.size()));
  out.set_skipped(index.report.total());

  std::map<std::string, int64_t> per_subject;
  std::vector<int64_t> pos(index.aus.size()), neg(index.aus.size()), masked(index.aus.size());
  std::vector<int64_t> expr_count(kNumExpressions);
  std::vector<double> expr_consistency(kNumExpressions);
  std::vector<int64_t> expr_with_consistency(kNumExpressions);
  for (const Sample& s : index.samples) {
    if (!s.subject.empty()) ++per_subject[s.subject];
    for (size_t k = 0; k < s.au.size() && k < pos.size(); ++k) {
      if (s.au[k] == kAuPresent) ++pos[k];
      else if (s.au[k] == kAuAbsent) ++neg[k];
      else ++masked[k];
    }
    if (s.expression >= 0 && s.expression < kNumExpressions) {
      ++expr_count[s.expression];
      if (s.consistency >= 0) {
        expr_consistency[s.expression] += s.consistency;
        ++expr_with_consistency[s.expression];
      }
    }
  }
  for (const auto& [subject, n] : per_subject) {
    v1::SubjectSummary* s = out.add_subjects();
    s->set_subject(subject);
    s->set_samples(n);
  }
  for (size_t k = 0; k < index.aus.size(); ++k) {
    v1::AuSummary* a = out.add_au_stats();
    a->set_au(index.aus[k]);
    a->set_positive(pos[k]);
    a->set_negative(neg[k]);
    a->set_masked(masked[k]);
    a->set_positive_rate(pos[k] + neg[k] > 0 ? static_cast<double>(pos[k]) / (pos[k] + neg[k]) : 0);
  }
  for (int e = 0; e < kNumExpressions; ++e) {
    if (expr_count[e] == 0) continue;
    v1::ExpressionSummary* x = out.add_expressions();
    x->set_expression(ExpressionName(e));
    x->set_count(expr_count[e]);
    x->set_mean_consistency(expr_with_consistency[e] > 0
                                ? expr_consistency[e] / expr_with_consistency[e]
                                : -1);
  }
  for (const auto& [reason, entry] : index.report.skips()) {
    v1::SkipSummary* s = out.add_skips();
    s->set_reason(reason);
    s->set_count(entry.count);
    for (const std::string& e : entry.examples) s->add_examples(e);
  }
  out.set_protocol(folds.empty() ? "" : protocol);
  for (const Fold& f : folds) {
    v1::FoldSummary* fs = out.add_folds();
    fs->set_fold(f.number);
    for (const std::string& s : f.train_subjects) fs->add_train_subjects(s);
    for (const std::string& s : f.test_subjects) fs->add_test_subjects(s);
    for (const std::string& s : f.val_subjects) fs->add_val_subjects(s);
    fs->set_train_samples(static_cast<int64_t>(f.train.size()));
    fs->set_val_samples(static_cast<int64_t>(f.val.size()));
    fs->set_test_samples(static_cast<int64_t>(f.test.size()));
    for (double r : PositiveRates(index, f.val)) fs->add_val_positive_rate(r);
  }
  for (const std::string& n : index.report.notes()) out.add_notes(n);
  for (const DatasetIndex::Partition& p : index.partitions) {
    v1::PartitionSummary* ps = out.add_partitions();
    ps->set_name(p.name);
    ps->set_entries(p.entries);
    ps->set_unit(p.unit);
    ps->set_used(p.used);
  }
  return out;
}

std::string FormatInspection(const v1::DatasetInspection& in) {
  std::string out;
  absl::StrAppendFormat(&out, "dataset   %s at %s\n", in.format(), in.root());
  absl::StrAppendFormat(&out, "samples   %d usable, %d skipped\n", in.samples(), in.skipped());
  if (in.partitions_size() > 0) {
    std::vector<std::string> parts;
    bool left_out = false;
    for (const auto& p : in.partitions()) {
      parts.push_back(absl::StrCat(p.name(), " ", p.entries(), " ", p.unit(), p.used() ? " (read)" : " (not read)"));
      left_out = left_out || !p.used();
    }
    absl::StrAppendFormat(&out, "partitions %s%s\n", absl::StrJoin(parts, ", "),
                          left_out ? "; --split (data.*.split in a spec) chooses: train, test or all" : "");
  }
  if (in.subjects_size() > 0) {
    std::vector<std::string> s;
    for (const auto& x : in.subjects()) s.push_back(absl::StrCat(x.subject(), "(", x.samples(), ")"));
    absl::StrAppendFormat(&out, "subjects  %d: %s\n", in.subjects_size(), absl::StrJoin(s, " "));
  }
  if (in.au_stats_size() > 0) {
    absl::StrAppend(&out, "\n  AU   positive   negative   masked   rate\n");
    for (const auto& a : in.au_stats()) {
      absl::StrAppendFormat(&out, "  %-4d %8d   %8d   %6d   %5.3f\n", a.au(), a.positive(),
                            a.negative(), a.masked(), a.positive_rate());
    }
  }
  if (in.expressions_size() > 0) {
    absl::StrAppend(&out, "\n  expression   count   mean consistency\n");
    for (const auto& e : in.expressions()) {
      absl::StrAppendFormat(&out, "  %-10s %7d   %s\n", e.expression(), e.count(),
                            e.mean_consistency() < 0 ? "unknown"
                                                     : absl::StrFormat("%.3f", e.mean_consistency()));
    }
  }
  if (in.skips_size() > 0) {
    absl::StrAppend(&out, "\nskipped\n");
    for (const auto& s : in.skips()) {
      absl::StrAppendFormat(&out, "  %-22s %d\n", s.reason(), s.count());
      for (const auto& e : s.examples()) absl::StrAppendFormat(&out, "      e.g. %s\n", e);
    }
  }
  if (in.folds_size() > 0) {
    absl::StrAppendFormat(&out, "\nfolds (%s)\n", in.protocol());
    for (const auto& f : in.folds()) {
      absl::StrAppendFormat(&out, "  fold %d  train %d + val %d samples, test %d samples\n", f.fold(),
                            f.train_samples(), f.val_samples(), f.test_samples());
      absl::StrAppendFormat(&out, "          train subjects: %s\n",
                            absl::StrJoin(f.train_subjects(), " "));
      absl::StrAppendFormat(&out, "          test subjects:  %s\n",
                            absl::StrJoin(f.test_subjects(), " "));
      if (f.val_subjects_size() > 0) {
        absl::StrAppendFormat(&out, "          val subjects:   %s (the reserve, whole)\n",
                              absl::StrJoin(f.val_subjects(), " "));
      }
    }
  }
  if (in.notes_size() > 0) {
    absl::StrAppend(&out, "\nnotes\n");
    for (const auto& n : in.notes()) absl::StrAppendFormat(&out, "  %s\n", n);
  }
  return out;
}

}  // namespace mal::data

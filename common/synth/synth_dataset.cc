// Over 400 lines on purpose: one generator; the AU subjects, the FE images with their simulated
// annotators and the ground truth are written by the same pass over one seeded random stream.

#include "common/synth/synth_dataset.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <mutex>
#include <thread>
#include <vector>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/data/expression.h"
#include "common/data/folds.h"
#include "common/synth/annotators.h"
#include "common/synth/face_renderer.h"
#include "common/util/files.h"
#include "common/util/progress.h"
#include "common/util/random.h"
#include "common/util/status_macros.h"

namespace mal::synth {

namespace fs = std::filesystem;

namespace {

constexpr int kMaxAuInHeader = 64;  // BP4D files carry integer columns well past the coded AUs
constexpr int kFirstUncodedAu = 40;  // BP4D: all AUs >= 40 are 9
// Lowest apex intensity of an AU in the AU videos, and the lowest share of the apex at onset and
// offset: a coded AU is always at least kMinApex * kMinProfile = 0.3 (docs/synthface.md: BP4D's
// frames are 1040 x 1392 px, where a trace AU covers many pixels; at 64-96 px anything fainter
// moved a pixel or less and no detector could see it).
constexpr double kMinApex = 0.5, kMinProfile = 0.6;

struct ImageJob {
  std::string path;
  FaceState state;
};

enum class FeKind { kClear, kWeak, kPartial, kNone };
const char* KindName(FeKind k) {
  switch (k) {
    case FeKind::kClear: return "clear";
    case FeKind::kWeak: return "weak";
    case FeKind::kPartial: return "partial";
    case FeKind::kNone: return "none";
  }
  return "";
}

// Subject i of the AU data: round-robin over the three standard BP4D parts, so the standard
// 3-fold protocol runs on SynthFace as on BP4D.
std::string AuSubjectName(int i) {
  const auto& parts = data::StandardParts("bp4d");
  return parts[i % 3][i / 3];
}

void SetAu(FaceState& s, int au, double v) {
  const int slot = SynthAuSlot(au);
  if (slot >= 0) s.au[slot] = std::max(s.au[slot], v);
}

// The AUs each of BP4D's eight tasks elicits (Zhang et al. 2014, "BP4D-Spontaneous", Table 1:
// T1 interview and joke, amusement; T2 film clip, sadness; T3 sudden sound, surprise; T4
// improvised song, embarrassment, a controlled smile; T5 threat, fear; T6 cold pressor, pain;
// T7 insult, anger; T8 smell, disgust), as the FACS prototypes of those states.
const std::vector<int>& TaskAus(int task) {
  static const std::vector<std::vector<int>> kTasks = {
      {6, 12, 25, 10},  {1, 4, 15, 17},   {1, 2, 25, 26}, {6, 12, 14, 24},
      {1, 2, 4, 7, 25}, {4, 6, 7, 9, 10}, {4, 7, 23, 24}, {9, 10, 17}};
  return kTasks[static_cast<size_t>(task) % kTasks.size()];
}

// The active AUs and their apex intensities of one segment of an AU video in task `task` (0..7):
// the task's elicited state, the talking and social smiling that go on in every BP4D task (AU6,
// 7, 10, 12, 14, 17, 25: BP4D's most frequent AUs, 34-59% of frames), rare extras, and the usual
// co-occurrences. Frame base rates come out near BP4D's (docs/synthface.md).
std::array<double, kSynthAus.size()> SegmentApex(Rng& rng, int task) {
  FaceState s;
  if (rng.Bernoulli(0.6)) {
    for (int au : TaskAus(task)) {
      if (rng.Bernoulli(0.85)) SetAu(s, au, rng.Uniform(kMinApex, 1.0));
    }
  }
  if (rng.Bernoulli(0.5)) {
    static const std::vector<std::pair<int, double>> kSocial = {
        {6, 0.6}, {7, 0.7}, {10, 0.75}, {12, 0.75}, {14, 0.65}, {17, 0.3}, {25, 0.5}};
    for (const auto& [au, p] : kSocial) {
      if (rng.Bernoulli(p)) SetAu(s, au, rng.Uniform(kMinApex, 1.0));
    }
  }
  for (int au : kSynthAus) {
    if (rng.Bernoulli(0.04)) SetAu(s, au, rng.Uniform(kMinApex, 1.0));
  }
  if (s.au[SynthAuSlot(12)] > 0 && rng.Bernoulli(0.6)) SetAu(s, 6, rng.Uniform(kMinApex, 1.0));
  if (s.au[SynthAuSlot(1)] > 0 && rng.Bernoulli(0.7)) SetAu(s, 2, rng.Uniform(kMinApex, 1.0));
  if (s.au[SynthAuSlot(26)] > 0) SetAu(s, 25, rng.Uniform(kMinApex, 1.0));
  return s.au;
}

absl::Status WriteImages(const std::vector<ImageJob>& jobs, int size, int threads) {
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::string error;
  std::mutex error_mu;
  auto work = [&] {
    const std::vector<int> params = {cv::IMWRITE_JPEG_QUALITY, 95};
    for (size_t i = next++; i < jobs.size() && !failed; i = next++) {
      const cv::Mat img = RenderFace(jobs[i].state, size);
      bool ok = false;
      try {
        ok = cv::imwrite(jobs[i].path, img, params);
      } catch (const cv::Exception& e) {
        ok = false;
      }
      NoteProgress();
      if (!ok) {
        std::lock_guard<std::mutex> lock(error_mu);
        error = absl::StrCat(jobs[i].path, ": cannot write image");
        failed = true;
      }
    }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  if (failed) return absl::DataLossError(error);
  return absl::OkStatus();
}

std::string AuTruthHeader() {
  std::vector<std::string> cols = {"id"};
  for (int au : kSynthAus) cols.push_back(absl::StrCat("AU", au, "_intensity"));
  return absl::StrJoin(cols, ",");
}

std::string Intensities(const FaceState& s) {
  std::vector<std::string> v;
  for (double x : s.au) v.push_back(absl::StrFormat("%.3f", x));
  return absl::StrJoin(v, ",");
}

absl::Status MakeDirs(const fs::path& p) {
  std::error_code ec;
  fs::create_directories(p, ec);
  if (ec) return absl::PermissionDeniedError(absl::StrCat(p.string(), ": ", ec.message()));
  return absl::OkStatus();
}

// Appends the AU data's jobs and writes its label files under `dir`.
absl::Status BuildAuData(const SynthOptions& o, const fs::path& dir, std::vector<ImageJob>& jobs) {
  RETURN_IF_ERROR(MakeDirs(dir / "AUCoding" / "AU_OCC"));
  std::string truth = AuTruthHeader() + "\n";
  // BP4D records 8 tasks per subject: up to 8 sessions here, at least 10 frames each.
  const int tasks = std::clamp(o.frames / 10, 1, 8);
  for (int i = 0; i < o.au_subjects; ++i) {
    const std::string subject = AuSubjectName(i);
    Rng subject_rng(MixSeed(o.seed, 1000 + i));
    const Identity identity = RandomIdentity(subject_rng);
    const bool pad = i % 2 == 1;  // both BP4D naming conventions appear
    for (int t = 0; t < tasks; ++t) {
      const std::string task = absl::StrCat("T", t + 1);
      const int n = o.frames / tasks + (t < o.frames % tasks ? 1 : 0);
      Rng rng(MixSeed(o.seed, (uint64_t{1} << 32) + i * 64 + t));
      // A lab session (BP4D: frontal camera, controlled light): a quarter of the in-the-wild
      // occluder rate, half the directional light, little blur. The FE photos keep the full
      // in-the-wild variation: that gap is part of what the auxiliary task has to bridge.
      Appearance base = RandomAppearance(rng, o.occluder_probability / 4);
      base.light_strength *= 0.5;
      base.blur_sigma = std::min(base.blur_sigma, 0.5);
      RETURN_IF_ERROR(MakeDirs(dir / subject / task));
      std::string csv = "0";
      for (int au = 1; au <= kMaxAuInHeader; ++au) absl::StrAppend(&csv, ",", au);
      csv += "\n";
      long frame = rng.IntIn(1, 800);
      int left_in_segment = 0, segment_length = 1;
      std::array<double, kSynthAus.size()> apex{};
      for (int f = 0; f < n; ++f, ++frame) {
        if (left_in_segment == 0) {
          segment_length = left_in_segment = static_cast<int>(rng.IntIn(4, 12));
          apex = SegmentApex(rng, t);
        }
        const double phase = 1.0 - static_cast<double>(left_in_segment) / segment_length;
        --left_in_segment;
        FaceState s;
        s.identity = identity;
        s.appearance = base;
        // Spontaneous head motion from frame to frame (BP4D's subjects move while they talk).
        s.appearance.rotation_deg += rng.Uniform(-4, 4);
        s.appearance.scale *= rng.Uniform(0.97, 1.03);
        s.appearance.shift_x += rng.Uniform(-0.02, 0.02);
        s.appearance.shift_y += rng.Uniform(-0.02, 0.02);
        s.appearance.noise_seed = rng.NextU64();
        // Onset, apex, offset within the segment; present AUs stay above kMinProfile of the apex.
        const double profile = kMinProfile + (1 - kMinProfile) * std::sin(M_PI * phase);
        for (size_t k = 0; k < apex.size(); ++k) s.au[k] = apex[k] * profile;
        const std::string name = pad ? absl::StrFormat("%04d", frame) : absl::StrCat(frame);
        jobs.push_back({(dir / subject / task / (name + ".jpg")).string(), s});
        absl::StrAppend(&csv, frame);
        for (int au = 1; au <= kMaxAuInHeader; ++au) {
          const int slot = SynthAuSlot(au);
          const int v = au >= kFirstUncodedAu ? 9 : (slot >= 0 && s.au[slot] > 0 ? 1 : 0);
          absl::StrAppend(&csv, ",", v);
        }
        csv += "\n";
        absl::StrAppend(&truth, subject, "/", task, "/", frame, ",", Intensities(s), "\n");
      }
      RETURN_IF_ERROR(WriteFileAtomic(
          (dir / "AUCoding" / "AU_OCC" / absl::StrCat(subject, "_", task, ".csv")).string(), csv));
    }
  }
  return WriteFileAtomic((dir / "synth_truth.csv").string(), truth);
}

// One FE sample: intended expression, ambiguity kind, AU intensities.
FaceState FeFace(int expression, FeKind kind, Rng& rng) {
  FaceState s;
  const std::vector<int>& proto = PrototypeAus(expression);
  switch (kind) {
    case FeKind::kClear:
      for (int au : proto) SetAu(s, au, rng.Uniform(0.55, 1.0));
      for (int au : kSynthAus) {
        if (rng.Bernoulli(0.03)) SetAu(s, au, rng.Uniform(0.15, 0.4));
      }
      break;
    case FeKind::kWeak:
      if (proto.empty()) {
        SetAu(s, kSynthAus[rng.Below(kSynthAus.size())], rng.Uniform(0.1, 0.3));
      }
      for (int au : proto) SetAu(s, au, rng.Uniform(0.06, 0.22));
      break;
    case FeKind::kPartial:
      if (proto.empty()) {
        SetAu(s, kSynthAus[rng.Below(kSynthAus.size())], rng.Uniform(0.3, 0.6));
      } else {
        SetAu(s, proto[rng.Below(proto.size())], rng.Uniform(0.4, 0.9));
      }
      break;
    case FeKind::kNone:
      break;
  }
  return s;
}

absl::Status BuildFeData(const SynthOptions& o, const fs::path& dir, std::vector<ImageJob>& jobs) {
  RETURN_IF_ERROR(MakeDirs(dir / "EmoLabel"));
  RETURN_IF_ERROR(MakeDirs(dir / "Image" / "aligned"));
  std::vector<Identity> identities;
  for (int j = 0; j < o.fe_subjects; ++j) {
    Rng rng(MixSeed(o.seed, 2000000 + j));
    identities.push_back(RandomIdentity(rng));
  }
  std::string list, distribution;
  std::string truth = "name,subject,intended,kind,label,consistency," + AuTruthHeader().substr(3) + "\n";
  const int n_test = static_cast<int>(std::lround(o.fe_images * o.fe_test_fraction));
  int n_train_written = 0, n_test_written = 0;
  for (int i = 0; i < o.fe_images; ++i) {
    Rng rng(MixSeed(o.seed, (uint64_t{3} << 32) + i));
    const int subject = i % o.fe_subjects;
    const int intended = static_cast<int>(rng.Below(data::kNumExpressions));
    FeKind kind = FeKind::kClear;
    if (rng.Bernoulli(o.ambiguous)) kind = static_cast<FeKind>(1 + rng.Below(3));
    FaceState s = FeFace(intended, kind, rng);
    s.identity = identities[subject];
    s.appearance = RandomAppearance(rng, o.occluder_probability);
    std::array<double, kSynthAus.size()> visible{};
    for (size_t k = 0; k < kSynthAus.size(); ++k) {
      visible[k] = s.au[k] * (1 - OccludedShare(kSynthAus[k], s.identity, s.appearance));
    }
    const Votes votes = SimulateAnnotators(visible, intended, o.annotators, rng);
    const bool test = i >= o.fe_images - n_test;
    const std::string name = test ? absl::StrFormat("test_%05d", ++n_test_written)
                                  : absl::StrFormat("train_%05d", ++n_train_written);
    jobs.push_back({(dir / "Image" / "aligned" / (name + "_aligned.jpg")).string(), s});
    absl::StrAppend(&list, name, ".jpg ", data::RafDbFromExpression(votes.label), "\n");
    // Distribution in RAF-DB's label order 1..7.
    absl::StrAppend(&distribution, name, ".jpg");
    for (int raf = 1; raf <= 7; ++raf) {
      absl::StrAppendFormat(&distribution, " %.3f",
                            votes.counts[data::ExpressionFromRafDb(raf)] /
                                static_cast<double>(o.annotators));
    }
    distribution += "\n";
    absl::StrAppendFormat(&truth, "%s.jpg,fe%04d,%s,%s,%s,%.3f,%s\n", name, subject,
                          data::ExpressionName(intended), KindName(kind),
                          data::ExpressionName(votes.label), votes.consistency, Intensities(s));
  }
  RETURN_IF_ERROR(WriteFileAtomic((dir / "EmoLabel" / "list_patition_label.txt").string(), list));
  RETURN_IF_ERROR(
      WriteFileAtomic((dir / "EmoLabel" / "distribution_basic.txt").string(), distribution));
  return WriteFileAtomic((dir / "synth_truth.csv").string(), truth);
}

absl::Status ValidateOptions(const SynthOptions& o) {
  if (o.out.empty()) return absl::InvalidArgumentError("--out: required");
  if (o.au_subjects < 1 || o.au_subjects > 41) {
    return absl::InvalidArgumentError("--au-subjects: must be in 1..41 (the BP4D subject ids)");
  }
  if (o.frames < 1) return absl::InvalidArgumentError("--frames: must be at least 1");
  if (o.fe_subjects < 1) return absl::InvalidArgumentError("--fe-subjects: must be at least 1");
  if (o.fe_images < 0) return absl::InvalidArgumentError("--fe-images: must be >= 0");
  if (o.ambiguous < 0 || o.ambiguous > 1) return absl::InvalidArgumentError("--ambiguous: must be in 0..1");
  if (o.size < 32 || o.size > 1024) return absl::InvalidArgumentError("--size: must be in 32..1024");
  if (o.annotators < 1) return absl::InvalidArgumentError("annotators: must be at least 1");
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<SynthSummary> GenerateSynthFace(const SynthOptions& o) {
  RETURN_IF_ERROR(ValidateOptions(o));
  const auto start = std::chrono::steady_clock::now();
  const fs::path out = fs::absolute(o.out);
  std::error_code ec;
  const bool exists = fs::exists(out, ec);
  if (exists && !fs::is_directory(out, ec)) {
    return absl::AlreadyExistsError(absl::StrCat(out.string(), ": exists and is not a directory"));
  }
  if (exists && !fs::is_empty(out, ec) && !o.force) {
    return absl::AlreadyExistsError(
        absl::StrCat(out.string(), ": exists and is not empty (use --force to replace it)"));
  }
  const fs::path partial = absl::StrCat(out.string(), ".partial-", ::getpid());
  fs::remove_all(partial, ec);
  RETURN_IF_ERROR(MakeDirs(partial));

  std::vector<ImageJob> jobs;
  absl::Status s = BuildAuData(o, partial / "au", jobs);
  const size_t au_images = jobs.size();
  if (s.ok()) s = BuildFeData(o, partial / "fe", jobs);
  const int threads = o.threads > 0 ? o.threads
                                    : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  if (s.ok()) s = WriteImages(jobs, o.size, threads);
  if (s.ok()) {
    s = WriteFileAtomic(
        (partial / "synthface.txt").string(),
        absl::StrFormat("SynthFace generated by malctl data synth\ngenerator %d\nseed %d\nau-subjects %d\n"
                        "frames %d\nfe-subjects %d\nfe-images %d\nambiguous %.3f\nsize %d\n"
                        "au: BP4D layout (AUCoding/AU_OCC)\nfe: RAF-DB basic layout (EmoLabel)\n",
                        kSynthFaceGenerator, o.seed, o.au_subjects, o.frames, o.fe_subjects,
                        o.fe_images, o.ambiguous,
                        o.size));
  }
  if (!s.ok()) {
    fs::remove_all(partial, ec);
    return s;
  }
  // Swap into place: an existing directory is moved aside first and removed only afterwards.
  fs::path old;
  if (exists) {
    old = absl::StrCat(out.string(), ".old-", ::getpid());
    fs::rename(out, old, ec);
    if (ec) {
      fs::remove_all(partial, ec);
      return absl::PermissionDeniedError(absl::StrCat(out.string(), ": cannot replace: ", ec.message()));
    }
  }
  fs::rename(partial, out, ec);
  if (ec) {
    const std::string message = ec.message();
    if (!old.empty()) fs::rename(old, out, ec);
    fs::remove_all(partial, ec);
    return absl::PermissionDeniedError(absl::StrCat(out.string(), ": cannot create: ", message));
  }
  if (!old.empty()) fs::remove_all(old, ec);

  SynthSummary summary;
  summary.au_images = static_cast<int64_t>(au_images);
  summary.fe_images = static_cast<int64_t>(jobs.size() - au_images);
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return summary;
}

absl::Status WritePreviewSheet(const std::string& path, uint64_t seed, int size) {
  constexpr int kColumns = 16;
  const int caption = std::max(14, size / 8);
  Rng rng(MixSeed(seed, 77));
  const Identity identity = RandomIdentity(rng);
  std::vector<std::pair<cv::Mat, std::string>> tiles;
  auto add = [&](const FaceState& s, std::string label) {
    tiles.emplace_back(RenderFace(s, size), std::move(label));
  };
  // Rows 1-2: each AU alone at full and at low intensity on one face.
  for (double level : {1.0, 0.3}) {
    FaceState s;
    s.identity = identity;
    add(s, "neutral");
    for (int au : kSynthAus) {
      FaceState t = s;
      t.au[SynthAuSlot(au)] = level;
      add(t, absl::StrFormat("AU%d %.1f", au, level));
    }
  }
  // Row 3: each expression clear, then ambiguous with the annotators' consistency.
  for (int e = 0; e < data::kNumExpressions; ++e) {
    FaceState s = FeFace(e, FeKind::kClear, rng);
    s.identity = identity;
    const Votes v = SimulateAnnotators(s.au, e, 40, rng);
    add(s, absl::StrFormat("%s c=%.2f", data::ExpressionName(e), v.consistency));
  }
  for (int e = 1; e < data::kNumExpressions + 2; ++e) {
    const FeKind kind = static_cast<FeKind>(1 + e % 3);
    const int expression = e % data::kNumExpressions;
    FaceState s = FeFace(expression, kind, rng);
    s.identity = identity;
    const Votes v = SimulateAnnotators(s.au, expression, 40, rng);
    add(s, absl::StrFormat("%.3s? %s %.2f", data::ExpressionName(expression), KindName(kind),
                           v.consistency));
  }
  // Row 4: random subjects, poses, light, noise, occluders.
  for (int i = 0; i < kColumns; ++i) {
    FaceState s;
    s.identity = RandomIdentity(rng);
    s.appearance = RandomAppearance(rng, 0.3);
    s.au = SegmentApex(rng, i);
    add(s, "random");
  }
  const int rows = static_cast<int>((tiles.size() + kColumns - 1) / kColumns);
  cv::Mat sheet(rows * (size + caption), kColumns * size, CV_8UC3, cv::Scalar(255, 255, 255));
  for (size_t i = 0; i < tiles.size(); ++i) {
    const int x = static_cast<int>(i % kColumns) * size;
    const int y = static_cast<int>(i / kColumns) * (size + caption);
    tiles[i].first.copyTo(sheet(cv::Rect(x, y, size, size)));
    cv::putText(sheet, tiles[i].second, cv::Point(x + 2, y + size + caption - 4),
                cv::FONT_HERSHEY_SIMPLEX, 0.3 * size / 112.0 + 0.05, cv::Scalar(0, 0, 0), 1,
                cv::LINE_AA);
  }
  std::vector<uchar> png;
  if (!cv::imencode(".png", sheet, png)) {
    return absl::InternalError(absl::StrCat(path, ": cannot encode the preview"));
  }
  return WriteFileAtomic(path, absl::string_view(reinterpret_cast<const char*>(png.data()), png.size()));
}

}  // namespace mal::synth
